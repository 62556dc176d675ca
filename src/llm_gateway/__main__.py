"""`python -m llm_gateway` runs the command line."""

from llm_gateway.cli import main

main()
