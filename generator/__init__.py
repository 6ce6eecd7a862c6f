"""Translator, text-to-image backends (diffusers), the audio-to-image pipeline and batch generation. No gradio."""
