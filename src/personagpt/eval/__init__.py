"""Evaluation: metrics and the evaluation run, as rows every renderer draws (`evaluate`)."""
