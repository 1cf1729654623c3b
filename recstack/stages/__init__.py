"""Recommendation logic shared by training and serving (pure functions and typed contracts, no clients)."""
