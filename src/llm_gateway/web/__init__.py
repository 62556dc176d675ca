"""Static web assets: the admin dashboard page."""
