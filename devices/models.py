"""Device identities of a connector: credentials, status, tags and write-hot activity."""

from __future__ import annotations

import datetime as dt

from django.db import models
from django.db.models import Q
from django.utils import timezone

from connector.models import Connector, now_us


class Status(models.TextChoices):
    """What a device list shows. `label` and `icon` are used by templates and the legend."""

    WHITELISTED = "whitelisted", "Whitelisted"
    PROVISIONED = "provisioned", "Provisioned"
    LOCKED = "locked", "Locked"
    DEVMODE = "devmode", "Developer mode"
    REPROVISION = "reprovision", "Reprovision"
    EXPIRED = "expired", "Expired"

    @property
    def icon(self) -> str:
        return STATUS_ICONS[self]

    @property
    def help(self) -> str:
        return STATUS_HELP[self]


STATUS_ICONS = {
    Status.WHITELISTED: "tag",
    Status.PROVISIONED: "check",
    Status.LOCKED: "lock",
    Status.DEVMODE: "wrench",
    Status.REPROVISION: "refresh",
    Status.EXPIRED: "clock",
}
STATUS_HELP = {
    Status.WHITELISTED: "May provision until its activation deadline.",
    Status.PROVISIONED: "Has its credential and talks to the device API.",
    Status.LOCKED: "Refused by the device API until unlocked.",
    Status.DEVMODE: "Provisioned while the connector was in developer mode.",
    Status.REPROVISION: "Credential revoked; may provision again.",
    Status.EXPIRED: "Did not provision before its activation deadline.",
}


class DeviceAuthType(models.TextChoices):
    NONE = "", "Not provisioned"
    TOKEN = "token", "Token"
    PASSWORD = "password", "Password"
    CERTIFICATE = "certificate", "Certificate"


class DeviceQuerySet(models.QuerySet["Device"]):
    def with_status(self, status: str, now: int | None = None) -> DeviceQuerySet:
        """Filter by the status a person sees; `expired` is computed, no cron job needed."""
        now = now_us() if now is None else now
        if status == Status.LOCKED:
            return self.filter(locked=True)
        unlocked = self.filter(locked=False)
        if status == Status.EXPIRED:
            return unlocked.filter(state=Status.WHITELISTED, expire__lt=now)
        if status == Status.WHITELISTED:
            return unlocked.filter(state=Status.WHITELISTED).filter(
                Q(expire__isnull=True) | Q(expire__gte=now)
            )
        return unlocked.filter(state=status)


class Device(models.Model):
    """One identity of a connector.

    `state` is the lifecycle (whitelisted, provisioned, devmode, reprovision); `locked` is kept
    apart so unlocking restores it. The status shown combines both with the deadline.
    Secrets are only ever stored as keyed hashes.
    """

    # Indexed by the (connector, identity) unique constraint; a separate index would only cost.
    connector = models.ForeignKey(
        Connector, on_delete=models.CASCADE, related_name="devices", db_index=False
    )
    identity = models.CharField(max_length=128)
    state = models.CharField(max_length=16, default=Status.WHITELISTED)
    locked = models.BooleanField(default=False)
    auth_type = models.CharField(
        max_length=16, choices=DeviceAuthType, default=DeviceAuthType.NONE, blank=True
    )
    # Keyed hash (connector.keys.keyed_hash) of the token or password; looked up by value.
    secret_hash = models.CharField(max_length=80, blank=True, default="")
    cert_pem = models.TextField(blank=True, default="")
    cert_fingerprint = models.CharField(max_length=64, blank=True, default="")
    cert_not_after = models.DateTimeField(null=True, blank=True)
    # Activation deadline, µs since the epoch (Murano's auth.expire); None = no deadline.
    expire = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    provisioned_at = models.DateTimeField(null=True, blank=True)

    objects = DeviceQuerySet.as_manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "identity"], name="unique_identity_per_connector"
            )
        ]
        indexes = [
            # Status filter walks identities in order within one state.
            models.Index(fields=["connector", "state", "identity"], name="device_state_identity"),
            # Token lookups: two equality columns, so the planner (SQLite's too) never prefers
            # walking all of a connector's devices instead. (Certificates are found by their
            # CN, the identity, so the fingerprint needs no index.)
            # Partial: whitelisted devices have no secret yet and stay out of it (fast imports).
            models.Index(
                fields=["connector", "secret_hash"],
                name="device_secret",
                condition=~Q(secret_hash=""),
            ),
            # Deadlines passing (devices.services.announce_expired): a range on `expire`
            # among the devices still waiting to provision.
            models.Index(
                fields=["expire"],
                name="device_waiting_expire",
                condition=Q(state="whitelisted"),
            ),
            # Devices holding a certificate bound on first use, counted by the Settings tab
            # before PKI is turned on: only those devices are in it.
            models.Index(
                fields=["connector"],
                name="device_bound_certificate",
                condition=Q(auth_type="certificate", provisioned_at__isnull=False),
            ),
        ]

    def __str__(self) -> str:
        return self.identity

    @property
    def reprovision(self) -> bool:
        return self.state == Status.REPROVISION

    @property
    def devmode(self) -> bool:
        return self.state == Status.DEVMODE

    def status_at(self, now: int) -> Status:
        if self.locked:
            return Status.LOCKED
        if self.state == Status.WHITELISTED and self.expire is not None and self.expire < now:
            return Status.EXPIRED
        return Status(self.state)

    @property
    def status(self) -> Status:
        return self.status_at(now_us())

    @property
    def expire_datetime(self) -> dt.datetime | None:
        if self.expire is None:
            return None
        return dt.datetime.fromtimestamp(self.expire / 1_000_000, tz=dt.UTC)

    @property
    def tag_list(self) -> list[dict[str, str]]:
        return [{"name": t.name, "value": t.value} for t in self.tags.all()]


class DeviceTag(models.Model):
    """A `{name, value}` tag; its own table so devices can be filtered by tag on any database."""

    # Indexed by the (device, name) unique constraint.
    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="tags", db_index=False
    )
    # A copy of the device's connector, so a tag filter is one index range per connector. Always
    # equal to device.connector, so no second foreign-key check on every inserted tag.
    connector = models.ForeignKey(
        Connector, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    name = models.CharField(max_length=64)
    value = models.CharField(max_length=256, blank=True)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["connector", "name", "value"], name="tag_lookup")]
        constraints = [
            models.UniqueConstraint(fields=["device", "name"], name="unique_tag_name_per_device")
        ]

    def __str__(self) -> str:
        return f"{self.name}={self.value}"


class DeviceActivity(models.Model):
    """Write-hot fields in a narrow row of their own, so requests never rewrite the device."""

    device = models.OneToOneField(
        Device, on_delete=models.CASCADE, primary_key=True, related_name="activity"
    )
    last_ip = models.GenericIPAddressField(null=True, blank=True)
    last_seen = models.BigIntegerField(null=True, blank=True)  # µs

    def __str__(self) -> str:
        return f"{self.device_id} seen {self.last_seen}"

    @property
    def last_seen_datetime(self) -> dt.datetime | None:
        if self.last_seen is None:
            return None
        return dt.datetime.fromtimestamp(self.last_seen / 1_000_000, tz=dt.UTC)


class DeviceSession(models.Model):
    """The device's MQTT session, now or last: connected while `connected_at` is set and the
    gateway process holding it (`node`) is alive (`provisioning.models.GatewayNode`)."""

    device = models.OneToOneField(
        Device, on_delete=models.CASCADE, primary_key=True, related_name="session"
    )
    connection = models.CharField(max_length=32)  # this session's id (events' connection_id)
    node = models.CharField(max_length=64)
    ip = models.GenericIPAddressField(null=True, blank=True)
    connected_at = models.BigIntegerField(null=True, blank=True)  # µs; None: disconnected
    disconnected_at = models.BigIntegerField(null=True, blank=True)  # µs, of the last session

    def __str__(self) -> str:
        return f"{self.device_id} on {self.node}"


class AliasValue(models.Model):
    """The latest value of one alias of one device (SPEC.md section 4): `reported` by the
    device, `set` by the cloud for settable resources; `timestamp` in µs."""

    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="values", db_index=False
    )
    alias = models.CharField(max_length=64)
    reported = models.TextField(null=True, blank=True)
    set = models.TextField(null=True, blank=True)
    timestamp = models.BigIntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["device", "alias"], name="unique_alias_per_device")
        ]

    def __str__(self) -> str:
        return f"{self.alias}={self.reported}"


class DataPoint(models.Model):
    """A historical value written with `record`."""

    device = models.ForeignKey(
        Device, on_delete=models.CASCADE, related_name="datapoints", db_index=False
    )
    alias = models.CharField(max_length=64)
    timestamp = models.BigIntegerField()  # µs
    value = models.TextField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["device", "alias", "timestamp"], name="unique_point_per_alias_time"
            )
        ]

    def __str__(self) -> str:
        return f"{self.alias}@{self.timestamp}={self.value}"


class ExpiryMark(models.Model):
    """One row: activation deadlines up to `until` (µs) have been announced as `expired`
    events. Moved forward only together with the events it covers, in one transaction."""

    until = models.BigIntegerField()

    def __str__(self) -> str:
        return f"expiries announced up to {self.until}"
