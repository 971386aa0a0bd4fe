"""The concept explorer (``stellar explore``): see, point at, retrieve and edit concepts."""
