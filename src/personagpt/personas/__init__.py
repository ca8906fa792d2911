"""Personas as text: persona facts turned into questions and negations (`facts`), system prompts in any style
turned into first-person facts (`prompts`), and character cards (`cards`)."""
