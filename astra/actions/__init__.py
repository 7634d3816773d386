"""astra.actions"""
