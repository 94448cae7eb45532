"""Retrain: turning alarms, schedules and operators into at most one running job, fitting the
candidate in the training process, the gate, the post-deploy guard and the first model."""
