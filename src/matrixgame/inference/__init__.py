"""Running a trained world model: the streaming session (:mod:`.session`) with its memory
pool (:mod:`.memory`), the controls a player holds (:mod:`.controls`), action scripts into
videos (:mod:`.generate`), and the evaluation's reference rollout (:mod:`.rollout`)."""
