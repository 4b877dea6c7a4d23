"""Vision-language models: visual Q&A, catalog RAG and re-ranking."""
