"""astra.train"""
