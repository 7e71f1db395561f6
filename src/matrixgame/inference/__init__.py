"""Running a trained world model: the streaming session (:mod:`.session`) with its memory
pool (:mod:`.memory`), the controls a player holds (:mod:`.controls`), action scripts into
videos (:mod:`.generate`), the evaluation's reference rollout (:mod:`.rollout`), and the
N+1 multi-process layout (:mod:`.parallel`: Ulysses DiT ranks and a decoder rank)."""
