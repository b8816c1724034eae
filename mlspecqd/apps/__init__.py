"""What users call, built on the engine and the cascade: text generation with stop strings and timings,
the LLM object with its OpenAI-shaped methods, load(), chat sessions and the chat loop, batch files."""
