"""The concept explorer (``stellar explore``): see, point at, retrieve and edit concepts.

``core`` holds the logic as plain functions, ``explorer`` the loaded model, ``retrieval`` the
cached token index of a collection, ``app`` the Gradio page (imported only when it is built).
"""
