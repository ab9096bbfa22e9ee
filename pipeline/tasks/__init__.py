"""Generation tasks: each declares its inputs, outputs, how it renders a prompt and how it parses."""
