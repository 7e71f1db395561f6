"""Running a trained world model: rollouts, and (to come) the streaming session."""
