"""astra.data"""
