"""Counters of failed device authentications, shared by every process through the database."""

from django.db import models


class AuthFailure(models.Model):
    """Failed activations and authentications from one address to one connector, per window.

    One row per (connector, address, window start); incremented with an upsert.
    """

    connector_id = models.CharField(max_length=20)
    ip = models.GenericIPAddressField()
    window_start = models.BigIntegerField()  # unix seconds
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connector_id", "ip", "window_start"], name="unique_failure_window"
            )
        ]
        indexes = [models.Index(fields=["window_start"], name="failure_window")]

    def __str__(self) -> str:
        return f"{self.ip} → {self.connector_id}: {self.count}"


class GuessFailure(models.Model):
    """Failed guesses at one subject (a device identity, an account) from one address, per
    window. The subject is stored as a digest (`ratelimit.subject_of`)."""

    connector_id = models.CharField(max_length=20)
    subject = models.CharField(max_length=40)
    ip = models.GenericIPAddressField()
    window_start = models.BigIntegerField()  # unix seconds
    count = models.PositiveIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connector_id", "subject", "window_start", "ip"],
                name="unique_guess_window",
            )
        ]
        indexes = [models.Index(fields=["window_start"], name="guess_window")]

    def __str__(self) -> str:
        return f"{self.ip} → {self.connector_id}/{self.subject}: {self.count}"


class GatewayNode(models.Model):
    """A server process holding MQTT sessions, with its last heartbeat (µs): a session whose
    node has not beaten for a while belongs to a process that is gone."""

    name = models.CharField(max_length=64, primary_key=True)
    seen = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.name} ({self.seen})"
