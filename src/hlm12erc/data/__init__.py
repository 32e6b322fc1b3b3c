"""Where utterances come from: sources (demo | kaggle | local), the demo corpus, the MELD schema."""
