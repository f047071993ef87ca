"""Showing results: tables (text, Markdown, CSV), the leaderboard, and PNG plots."""
