"""The generator's agents: who answered each contact, drawn from the care it got, and each agent's recorded skill."""
from __future__ import annotations

import numpy as np
from scipy import stats


def drawn_agents(rng: np.random.Generator, quality: np.ndarray, answered: np.ndarray, contacts_per_agent: int,
                 agent_care_share: float, care_quality_beta: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """(each contact's agent number, -1 where nobody answered; each agent's skill), one agent per
    `contacts_per_agent` answered contacts.

    The care quality is already drawn, so the agent is drawn from what that care says of who gave it: on the normal
    scale a contact's care is skill x sqrt(share) + noise, so P(agent | care) is each agent's normal density at the
    care (equal priors). The tables stay as drawn, and agents still differ in the care (so the empathy and the
    resolution) their contacts get.
    """
    count = max(1, int(np.ceil(answered.sum() / contacts_per_agent)))
    skill = rng.normal(0, 1, count)
    weight = np.sqrt(agent_care_share)
    latent = stats.norm.ppf(np.clip(stats.beta.cdf(quality, *care_quality_beta), 1e-9, 1 - 1e-9))
    agent = np.full(quality.size, -1)
    rows = np.flatnonzero(answered)
    # In chunks: contacts x agents log-densities for a large day would not fit in memory at once.
    for chunk in np.array_split(rows, max(1, rows.size // 4096)):
        log_density = -(latent[chunk, None] - weight * skill[None, :]) ** 2 / (2 * (1 - agent_care_share))
        agent[chunk] = np.argmax(log_density + rng.gumbel(size=log_density.shape), axis=1)
    return agent, skill
