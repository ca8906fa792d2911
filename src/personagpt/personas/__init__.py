"""Personas as text: persona facts turned into questions and negations (`facts`)."""
