"""Persona authentication: an interviewer steers the conversation with action codes so that its partner's replies
reveal which persona it has (Tang et al., 2021, "Persona Authentication through Generative Dialogue")."""
