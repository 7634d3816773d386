"""astra.model"""
