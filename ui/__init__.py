"""The Gradio app: thin over `generator`."""
