"""SGM: safety glasses for vision-language models."""
