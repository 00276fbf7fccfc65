"""The service's settings: the API key clients must send and the request limits."""
from __future__ import annotations

from typing import Optional

from pydantic import BaseModel, ConfigDict, Field


class ServiceSettings(BaseModel):
    """What guards the service: the API key clients must send (None: no authentication) and the request limits."""

    model_config = ConfigDict(frozen=True)

    # Kept out of repr so that logging the settings never prints the key.
    api_key: Optional[str] = Field(default=None, repr=False)
    max_body_bytes: int = Field(gt=0, description="Largest request body accepted, in bytes.")
    max_batch: int = Field(gt=0, description="Most conversations, interactions or transcripts in one request.")
    request_timeout_s: float = Field(30.0, gt=0, allow_inf_nan=False,
                                     description="Longest a request waits for and runs scoring before it gets 503.")
    body_timeout_s: float = Field(10.0, gt=0, allow_inf_nan=False,
                                  description="Longest a client may take to send a request body before it gets 408.")
    log_text: bool = Field(False, description="Add each request's transcript texts to its access-log line.")
