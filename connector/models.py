"""Accounts, connectors with their settings, management API tokens and the event log."""

from __future__ import annotations

import secrets
import string
import time

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, BaseUserManager, PermissionsMixin
from django.db import models
from django.utils import timezone

from connector.identity import Casing, IdentityFormat, IdentityType


class UserManager(BaseUserManager["User"]):
    use_in_migrations = True

    @classmethod
    def normalize_email(cls, email: str | None) -> str:
        # Email is the login: compare it case-insensitively by storing it lower-cased.
        return (email or "").strip().lower()

    def get_by_natural_key(self, username: str | None) -> User:
        return self.get(email=self.normalize_email(username))

    def create_user(self, email: str, password: str | None = None, **extra) -> User:
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra) -> User:
        extra.update(is_staff=True, is_superuser=True)
        return self.create_user(email, password, **extra)


class User(AbstractBaseUser, PermissionsMixin):
    """An administrator; signs in with email and password."""

    email = models.EmailField(unique=True)
    is_active = models.BooleanField(default=True)
    is_staff = models.BooleanField(default=False)
    date_joined = models.DateTimeField(default=timezone.now)

    objects = UserManager()

    USERNAME_FIELD = "email"
    EMAIL_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    def __str__(self) -> str:
        return self.email


CONNECTOR_ID_ALPHABET = string.ascii_lowercase + string.digits
# Murano's `protocol.name` values (SPEC.md section 8).
HTTP_PROTOCOL = "onep:v1/http"
MQTT_PROTOCOL = "murano:v1/mqtt"
CONNECTOR_ID_LENGTH = 17  # within Murano's 14-20; 17 characters carry 87 bits


def new_connector_id() -> str:
    return "".join(secrets.choice(CONNECTOR_ID_ALPHABET) for _ in range(CONNECTOR_ID_LENGTH))


class SignInAddress(models.Model):
    """An address an account signed in from, and when last: the failures of others against
    the account (from elsewhere) never lock its owner out of the places they sign in from."""

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="sign_in_addresses")
    ip = models.GenericIPAddressField()
    last_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "ip"], name="unique_sign_in_address")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} from {self.ip}"


class AuthType(models.TextChoices):
    TOKEN = "token", "Token"
    PASSWORD = "password", "Password"
    CERTIFICATE = "certificate", "TLS client certificate"


class Vendor(models.TextChoices):
    NONE = "", "None (devices bring certificates signed by a client CA)"
    LOCAL = "local", "Local CA (this server signs)"
    DIGICERT = "digicert", "DigiCert"


class ConnectorQuerySet(models.QuerySet["Connector"]):
    def for_user(self, user) -> ConnectorQuerySet:
        """Connectors the user belongs to: the only ones they may see or touch."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(memberships__user=user).annotate(my_role=models.F("memberships__role"))


class Connector(models.Model):
    """An IoT Connector: its identity, settings, members; devices hang off it.

    Settings are columns, not a JSON blob, so the device API reads them with the one query that
    finds the connector by host name.
    """

    id = models.CharField(primary_key=True, max_length=20, default=new_connector_id, editable=False)
    name = models.CharField(max_length=100)
    created_at = models.DateTimeField(default=timezone.now)
    members = models.ManyToManyField(
        settings.AUTH_USER_MODEL, through="Membership", related_name="connectors"
    )

    # Protocol
    devmode = models.BooleanField("Enable Developer Mode", default=False)
    # Murano's `protocol.name`: "onep:v1/http" (HTTP only) or "murano:v1/mqtt" (MQTT too).
    protocol_name = models.CharField(max_length=32, default=HTTP_PROTOCOL)
    # Provisioning
    provisioning_enabled = models.BooleanField(default=True)
    auth_type = models.CharField(max_length=16, choices=AuthType, default=AuthType.TOKEN)
    presenter_identity = models.BooleanField(
        "Allow devices to register their own identity", default=False
    )
    ip_whitelisting_enabled = models.BooleanField(default=False)
    ip_allowed = models.JSONField(default=list, blank=True)
    activation_period_hours = models.PositiveIntegerField(default=48)
    # Identity format
    id_prefix = models.CharField(max_length=64, blank=True, default="")
    id_type = models.CharField(max_length=16, choices=IdentityType, default=IdentityType.OPAQUE)
    id_length = models.PositiveIntegerField(null=True, blank=True)
    id_casing = models.CharField(max_length=8, choices=Casing, default=Casing.MIXED)
    # Public key infrastructure
    pki_enabled = models.BooleanField(default=False)
    vendor_name = models.CharField(max_length=16, choices=Vendor, default=Vendor.NONE, blank=True)
    # Non-secret vendor options (DigiCert profile name, validity months).
    vendor_options = models.JSONField(default=dict, blank=True)
    # Write-only: Fernet-encrypted with ENCRYPTION_KEY, never rendered back.
    vendor_api_key_encrypted = models.TextField(blank=True, default="")
    # The local signer's CA: certificate (public) and private key (Fernet-encrypted, never shown).
    signer_ca_pem = models.TextField(blank=True, default="")
    signer_key_encrypted = models.TextField(blank=True, default="")
    # Resource definitions (alias -> definition), filled by the Resources tab.
    resources = models.JSONField(default=dict, blank=True)
    # Bumped on every change of `resources`: the device API's cached copy checks it.
    resources_version = models.PositiveIntegerField(default=0)
    # Whether any enabled event subscription exists: the store writes outbox rows only then,
    # reading this in the statement that writes (connector.subscriptions keeps it true).
    events_enabled = models.BooleanField(default=False)

    objects = ConnectorQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.id})"

    @property
    def fqdn(self) -> str:
        return f"{self.id}.{settings.DEVICE_API_DOMAIN}"

    @property
    def mqtt_endpoint(self) -> str:
        """`host:port` of its MQTT Device API, "" when it takes no MQTT."""
        if self.protocol_name != MQTT_PROTOCOL or not settings.MQTT_PORT:
            return ""
        return f"{self.fqdn}:{settings.MQTT_PORT}"

    @property
    def identity_format(self) -> IdentityFormat:
        return IdentityFormat(
            prefix=self.id_prefix,
            type=self.id_type,
            length=self.id_length or None,
            casing=self.id_casing,
        )


class Membership(models.Model):
    class Role(models.TextChoices):
        # Ranked in connector.access, where what each may do is decided.
        OWNER = "owner", "Owner"
        ADMIN = "admin", "Admin"
        OPERATOR = "operator", "Operator"
        VIEWER = "viewer", "Viewer"

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships"
    )
    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=8, choices=Role, default=Role.OWNER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "connector"], name="unique_membership")
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in {self.connector_id} ({self.role})"


class ClientCA(models.Model):
    """A CA certificate that signs device certificates for a connector (PKI)."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="client_cas")
    pem = models.TextField()
    fingerprint = models.CharField(max_length=64)  # SHA-256 hex
    subject = models.CharField(max_length=500)
    not_after = models.DateTimeField()
    added_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["added_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "fingerprint"], name="unique_client_ca_per_connector"
            )
        ]

    def __str__(self) -> str:
        return self.subject

    @property
    def fingerprint_display(self) -> str:
        return ":".join(self.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()


class Invitation(models.Model):
    """A one-time, expiring invitation to join a connector with a role. Only the token's
    keyed hash is stored; the link is shown (or emailed) once."""

    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=8, choices=Membership.Role)
    digest = models.CharField(max_length=80, unique=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"invitation of {self.email} to {self.connector_id} ({self.role})"

    def is_open(self) -> bool:
        return (
            self.accepted_at is None
            and self.revoked_at is None
            and self.expires_at > timezone.now()
        )


class ApiToken(models.Model):
    """A management API token; only its keyed hash is stored. Expires; revocable. A scoped
    token acts on one connector only, with at most `role` there (connector.access)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    digest = models.CharField(max_length=80, unique=True)
    name = models.CharField(max_length=100, blank=True, default="")
    connector = models.ForeignKey(
        Connector, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens"
    )
    role = models.CharField(max_length=8, choices=Membership.Role, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"API token {self.pk} of user {self.user_id}"

    def is_usable(self) -> bool:
        return self.revoked_at is None and self.expires_at > timezone.now()


def now_us() -> int:
    return time.time_ns() // 1000


class EventType(models.TextChoices):
    PROVISIONED = "provisioned", "Provisioned"
    PROVISION_FAILED = "provision_failed", "Provision failed"
    DATA_IN = "data_in", "Write"
    DATA_REFUSED = "data_refused", "Write refused"
    RECORD = "record", "Record"
    READ = "read", "Read"
    AUTH_FAILED = "auth_failed", "Authentication failed"
    EXPIRED = "expired", "Expired"
    LOCKED = "locked", "Locked"
    UNLOCKED = "unlocked", "Unlocked"
    REVOKED = "revoked", "Revoked"
    WHITELISTED = "whitelisted", "Whitelisted"
    DELETED = "deleted", "Deleted"
    DEVICE_UPDATED = "updated", "Device updated"
    CERTIFICATE_ISSUED = "certificate_issued", "Certificate issued"
    SETTINGS_CHANGED = "settings_changed", "Settings changed"
    CONNECTOR_CREATED = "connector_created", "Connector created"
    CONNECTOR_RENAMED = "connector_renamed", "Connector renamed"
    CONNECT = "connect", "Connected"
    DISCONNECT = "disconnect", "Disconnected"
    CONTENT_IN = "content_in", "Download"
    CONTENT_UPLOADED = "content_uploaded", "Content uploaded"
    CONTENT_DELETED = "content_deleted", "Content deleted"
    CONTENT_REFUSED = "content_refused", "Upload refused"
    MEMBER_INVITED = "member_invited", "Member invited"
    INVITATION_REVOKED = "invitation_revoked", "Invitation revoked"
    MEMBER_JOINED = "member_joined", "Member joined"
    MEMBER_ROLE_CHANGED = "member_role_changed", "Role changed"
    MEMBER_REMOVED = "member_removed", "Member removed"
    TOKEN_CREATED = "token_created", "API token created"
    TOKEN_REVOKED = "token_revoked", "API token revoked"


class Event(models.Model):
    """One line of a connector's log. Append-only; written by the service that acted."""

    # Indexed by the composite indexes below, which all start with the connector.
    connector = models.ForeignKey(
        Connector, on_delete=models.CASCADE, related_name="events", db_index=False
    )
    time = models.BigIntegerField(default=now_us)  # µs since the epoch
    type = models.CharField(max_length=32, choices=EventType)
    identity = models.CharField(max_length=128, blank=True, default="")
    source_ip = models.GenericIPAddressField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        db_index=False,  # see the partial index: device events have no actor
    )
    actor_email = models.CharField(max_length=254, blank=True, default="")
    summary = models.CharField(max_length=300)
    payload = models.JSONField(default=dict, blank=True)

    class Meta:
        # Newest-first keyset pages per connector, optionally narrowed by type or identity.
        indexes = [
            models.Index(fields=["connector", "-id"], name="event_connector_id"),
            models.Index(fields=["connector", "type", "-id"], name="event_connector_type"),
            models.Index(fields=["connector", "identity", "-id"], name="event_connector_identity"),
            # For SET_NULL when a user is deleted; device events (most rows) stay out of it.
            models.Index(
                fields=["actor"], name="event_actor", condition=models.Q(actor__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.type} {self.identity} {self.summary}"


def new_subscription_id() -> str:
    return "sub_" + "".join(secrets.choice(CONNECTOR_ID_ALPHABET) for _ in range(16))


class Subscription(models.Model):
    """Where a connector's device events go (SPEC.md section 10): which types, to which
    destination, signed with which secret. Secrets and extra headers are encrypted at rest
    (the signature needs the secret itself) and never shown again after creation."""

    class Kind(models.TextChoices):
        WEBHOOK = "webhook", "HTTPS webhook"
        AMQP = "amqp", "RabbitMQ (AMQP 0-9-1)"

    id = models.CharField(primary_key=True, max_length=24, default=new_subscription_id)
    connector = models.ForeignKey(Connector, on_delete=models.CASCADE, related_name="subscriptions")
    kind = models.CharField(max_length=16, choices=Kind, default=Kind.WEBHOOK)
    types = models.JSONField(default=list)  # event types; empty: all
    url = models.TextField(blank=True, default="")
    headers_encrypted = models.TextField(blank=True, default="")  # Fernet JSON {name: value}
    # A broker's destination, with its credentials: Fernet JSON {url, exchange, routing_key}.
    destination_encrypted = models.TextField(blank=True, default="")
    secret_encrypted = models.TextField()
    # During a rotation the previous secret signs too, until `previous_until`.
    previous_secret_encrypted = models.TextField(blank=True, default="")
    previous_until = models.DateTimeField(null=True, blank=True)
    # Events per delivery: 1 sends each event as one object; more sends JSON arrays.
    batch_size = models.PositiveSmallIntegerField(default=1)
    enabled = models.BooleanField(default=True)
    disabled_reason = models.CharField(max_length=300, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    # Health, kept by the relay.
    last_success_at = models.DateTimeField(null=True, blank=True)
    last_error_at = models.DateTimeField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    delivered = models.PositiveBigIntegerField(default=0)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.id} → {self.url}"


class OutboxEvent(models.Model):
    """A device event to deliver, written in the transaction of the change it describes.
    `partition` (from the identity) orders delivery: one device's events stay in one
    partition, delivered in id order; partitions are delivered in parallel."""

    id = models.BigAutoField(primary_key=True)
    connector_id = models.CharField(max_length=20)
    partition = models.PositiveSmallIntegerField()
    type = models.CharField(max_length=32)
    identity = models.CharField(max_length=128)
    ip = models.CharField(max_length=45, blank=True, default="")
    protocol = models.CharField(max_length=8, default="http")
    time = models.BigIntegerField()  # µs
    payload = models.TextField(default="[]")  # JSON: [{"timestamp", "values"}]
    connection_id = models.CharField(max_length=32, blank=True, default="", db_default="")

    class Meta:
        indexes = [
            models.Index(fields=["connector_id", "partition", "id"], name="outbox_partition"),
            models.Index(fields=["time"], name="outbox_time"),
        ]

    def __str__(self) -> str:
        return f"{self.id} {self.type} {self.identity}"


class DeliveryCursor(models.Model):
    """How far one subscription has delivered one partition, and who relays it now (a lease,
    so exactly one relay works on a partition at a time, in any process)."""

    subscription = models.ForeignKey(Subscription, on_delete=models.CASCADE, related_name="cursors")
    partition = models.PositiveSmallIntegerField()
    last_id = models.BigIntegerField(default=0)  # the newest outbox id delivered (or skipped)
    attempts = models.PositiveIntegerField(default=0)  # of the event after last_id
    failing_since = models.BigIntegerField(null=True, blank=True)  # µs
    next_attempt_at = models.BigIntegerField(default=0)  # µs
    lease_owner = models.CharField(max_length=64, blank=True, default="")
    lease_until = models.BigIntegerField(default=0)  # µs

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["subscription", "partition"], name="unique_cursor_partition"
            )
        ]

    def __str__(self) -> str:
        return f"{self.subscription_id}/{self.partition} at {self.last_id}"


class DeadLetter(models.Model):
    """An event its subscription gave up on after the retry period: kept with the answer of
    the last attempt, replayable."""

    subscription = models.ForeignKey(
        Subscription, on_delete=models.CASCADE, related_name="dead_letters"
    )
    event_id = models.BigIntegerField()
    body = models.TextField()  # the event JSON as it was sent
    attempts = models.PositiveIntegerField()
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=500, blank=True, default="")
    last_response = models.CharField(max_length=1000, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)
    # Replay: asked for (the relay sends it again, under the same id), done.
    replay_requested_at = models.DateTimeField(null=True, blank=True)
    next_replay_at = models.BigIntegerField(default=0)  # µs; claimed by the relay sending it
    replayed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.subscription_id}: {self.event_id}"


class ContentItem(models.Model):
    """A file in a connector's content area (SPEC.md section 9), e.g. a firmware image.
    `blob` names its bytes in the content storage: each upload gets a new one, so replacing
    an item swaps the row's pointer in one transaction and a download under way keeps
    reading the bytes it opened."""

    connector = models.ForeignKey(
        Connector, on_delete=models.CASCADE, related_name="content_items", db_index=False
    )
    name = models.CharField(max_length=128)
    content_type = models.CharField(max_length=255)
    size = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    description = models.CharField(max_length=1000, blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    blob = models.CharField(max_length=300)
    updated_at = models.DateTimeField(default=timezone.now)
    uploaded_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    uploaded_by_email = models.CharField(max_length=254, blank=True, default="")
    downloads = models.PositiveBigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["connector", "name"], name="unique_content_name")
        ]
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.connector_id}/{self.name}"


class ContentUpload(models.Model):
    """An upload handed out as a signed descriptor and not yet finished: what the bytes must
    be (type, sha256, at most `max_size`), by when, and by whom. Used once."""

    id = models.CharField(primary_key=True, max_length=32)
    connector = models.ForeignKey(
        Connector, on_delete=models.CASCADE, related_name="content_uploads"
    )
    name = models.CharField(max_length=128)
    content_type = models.CharField(max_length=255)
    sha256 = models.CharField(max_length=64, blank=True, default="")  # empty: computed
    description = models.CharField(max_length=1000, blank=True, default="")
    tags = models.JSONField(default=dict, blank=True)
    max_size = models.BigIntegerField()
    blob = models.CharField(max_length=300)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        indexes = [models.Index(fields=["expires_at"], name="content_upload_expiry")]

    def __str__(self) -> str:
        return f"{self.connector_id}/{self.name} ({self.id})"


class EventCount(models.Model):
    """How many events of a type (and failure reason) a connector logged in one closed hour,
    for the Overview tab: counted once when the hour is over (connector.overview), so a page
    view reads a week of hours instead of a week of events."""

    connector = models.ForeignKey(
        Connector, on_delete=models.CASCADE, related_name="+", db_index=False
    )
    hour = models.BigIntegerField()  # µs since the epoch at the hour's start
    type = models.CharField(max_length=32)
    reason = models.CharField(max_length=300, blank=True, default="")
    count = models.IntegerField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connector", "hour", "type", "reason"], name="unique_event_count"
            )
        ]

    def __str__(self) -> str:
        return f"{self.count} {self.type} at {self.hour}"


class EventCountMark(models.Model):
    """The hours from `since` to `until` (µs) are counted in EventCount for this connector."""

    connector = models.OneToOneField(
        Connector, on_delete=models.CASCADE, primary_key=True, related_name="+"
    )
    since = models.BigIntegerField()
    until = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.connector_id} counted until {self.until}"
