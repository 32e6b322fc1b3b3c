"""hlm12erc: multimodal emotion recognition in conversations (MELD)."""
