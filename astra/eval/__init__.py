"""astra.eval"""
