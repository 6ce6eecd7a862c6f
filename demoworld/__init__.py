"""The demo world: generated scenes, captions and spoken captions, plus the pixel judge.

No pretrained image model or audio-caption dataset is reachable offline, so the project
generates its own small world and uses it as the embedded default and quality yardstick.
"""
