"""The OpenAI Files and Batch APIs: uploads, batches, and the runner that works them off."""
