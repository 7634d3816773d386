"""astra.rollout"""
