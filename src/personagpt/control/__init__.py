"""Control: turn-level goals and the goal labeler (`goals`), self-play between an interviewer and a persona bot
(`selfplay`), teaching new goals online (`teach`), and self-training data for goals (`selftrain`)."""
