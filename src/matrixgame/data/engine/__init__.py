"""The data engine's four layers: game process, agent, recording coordination, dataset output."""
