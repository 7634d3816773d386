"""astra.serve"""
