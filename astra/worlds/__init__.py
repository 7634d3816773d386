"""astra.worlds"""
