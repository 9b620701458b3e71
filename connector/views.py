"""Pages: sign-up, connector list, and a connector's tabs (Settings, Devices, Resources, Logs)."""

from __future__ import annotations

from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt, csrf_protect
from django.views.decorators.http import require_POST

from connector import (
    access,
    content,
    content_api,
    logs,
    members,
    members_api,
    outbox,
    overview,
    safeinput,
    services,
    signin,
    subscriptions,
)
from connector.forms import ConnectorNameForm, SettingsForm, SignInForm, SignUpForm
from connector.models import Connector, EventType
from devices.forms import ResourceForm
from devices.models import Status

Role = access.Role


class SignInView(auth_views.LoginView):
    """Django's sign-in page; a throttled attempt is answered 429 with Retry-After and says
    so on the form. `?email=` fills the email in (after signing up)."""

    authentication_form = SignInForm
    redirect_authenticated_user = True

    def get_initial(self):
        return {"username": self.request.GET.get("email", "")[:254]}

    def form_invalid(self, form):
        response = super().form_invalid(form)
        if (retry := signin.retry_after_of(self.request)) is not None:
            response.status_code = 429
            response["Retry-After"] = str(retry)
        return response


def signup(request: HttpRequest) -> HttpResponse:
    """Create an account, as `SIGNUP` allows (members.signup_mode).

    Without an invitation the answer is the same whether or not the address had an account
    (a new one is created only if not), so the page cannot be used to find who has one:
    either way, the next step is signing in. With an invitation (`?invitation=<token>`) the
    address is the invited one; the new account is signed in and joins at once."""
    if request.user.is_authenticated:
        return redirect("connector-list")
    token = request.GET.get("invitation", "")
    invited = members.find_invitation(token) if token else None
    mode = members.signup_mode()
    if mode == "closed" or (mode == "invite" and invited is None):
        context = {"refused": mode, "bad_invitation": bool(token) and invited is None}
        return render(request, "registration/signup.html", context, status=403)
    data = request.POST.copy() if request.method == "POST" else None
    if data is not None and invited is not None:
        data["email"] = invited.email  # the invited address, whatever was sent
    form = SignUpForm(data, initial={"email": invited.email if invited else ""})
    if invited is not None:
        form.fields["email"].disabled = True
    context = {"form": form, "invitation": invited}
    if request.method == "POST":
        if (retry := signin.signup_refused(request.META.get("REMOTE_ADDR", ""))) is not None:
            context.update(form=SignUpForm(), throttled=signin.signup_message(retry))
            response = render(request, "registration/signup.html", context, status=429)
            response["Retry-After"] = str(retry)
            return response
        if form.is_valid():
            email = form.cleaned_data["email"]
            user = services.sign_up(email, form.cleaned_data["password1"])
            if invited is None:
                messages.success(
                    request, "Your account is ready: sign in with the password you chose."
                )
                return redirect(f"{reverse('login')}?{urlencode({'email': email})}")
            next_url = reverse("invitation", args=[token])
            if user is None:  # the invited address has an account: sign in to accept
                messages.info(request, f"{email} has an account already: sign in to accept.")
                return redirect(
                    f"{reverse('login')}?{urlencode({'email': email, 'next': next_url})}"
                )
            login(request, user, backend="connector.auth.EmailBackend")
            return invitation(request, token)
    return render(request, "registration/signup.html", context)


@login_required
def connector_list(request: HttpRequest) -> HttpResponse:
    form = ConnectorNameForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        connector = services.create_connector(request.user, form.cleaned_data["name"])
        messages.success(request, f"Connector “{connector.name}” created.")
        return redirect("connector-settings", connector_id=connector.id)
    connectors = Connector.objects.for_user(request.user)
    return render(request, "connector/list.html", {"connectors": connectors, "form": form})


def _tab(request, connector: Connector, tab: str, template: str, status: int = 200, **extra):
    context = {"connector": connector, "tab": tab, **extra}
    return render(request, template, context, status=status)


@login_required
def connector_settings(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, change=Role.ADMIN)
    form = SettingsForm(request.POST or None, connector=connector)
    bound = _bound_certificates(connector) if not connector.pki_enabled else 0
    pki_warning = 0
    if request.method == "POST":
        if form.is_valid():
            turning_on = form.cleaned_data.get("pki_enabled") and not connector.pki_enabled
            if turning_on and bound and not request.POST.get("pki_confirm"):
                pki_warning = bound  # said before anything is saved, with the count
            else:
                changed = services.update_settings(connector, request.user, form.cleaned_data)
                messages.success(request, "Settings saved." if changed else "Nothing to change.")
                return redirect("connector-settings", connector_id=connector.id)
    return _tab(
        request,
        connector,
        "settings",
        "connector/settings.html",
        form=form,
        client_cas=form.existing_cas,
        subscriptions=[
            subscriptions.as_json(found) | {"dead": subscriptions.recent_dead_letters(found)}
            for found in connector.subscriptions.all()
        ]
        if connector.can.administer
        else [],
        event_types=outbox.TYPES,
        bound_certificates=bound,
        bound_cap=BOUND_COUNT_CAP,
        pki_warning=pki_warning,
        status=400 if form.errors or pki_warning else 200,
    )


BOUND_COUNT_CAP = 10_000  # "10000+": a page view never counts a whole fleet


def _bound_certificates(connector: Connector) -> int:
    """Devices holding a certificate bound on first use (PKI off): turning PKI on refuses
    those no client CA signed."""
    from devices.models import Device, DeviceAuthType

    bound = Device.objects.filter(
        connector=connector, auth_type=DeviceAuthType.CERTIFICATE, provisioned_at__isnull=False
    )  # the partial index device_bound_certificate holds just these
    return bound[:BOUND_COUNT_CAP].count()


@login_required
def connector_overview(request: HttpRequest, connector_id: str) -> HttpResponse:
    """Pictures of the fleet: devices by status, provisions and failures per hour (24 h and
    7 days, failures by reason), writes per minute and devices seen in the last hour."""
    from devices.charts import bar_chart

    connector = access.connector_for(request, connector_id)
    days = 7 if request.GET.get("range") == "week" else 1
    hours = overview.hourly(connector, 24 * days)
    recent = overview.last_hour(connector)
    statuses = overview.status_counts(connector)
    return _tab(
        request,
        connector,
        "overview",
        "connector/overview.html",
        days=days,
        statuses=[(status, statuses[status]) for status in Status],
        devices=sum(statuses.values()),
        provisions=bar_chart([(h["hour"], h["provisioned"]) for h in hours], overview.HOUR_US),
        failures=bar_chart([(h["hour"], h["failures"]) for h in hours], overview.HOUR_US),
        reasons=overview.failure_reasons(hours),
        writes=bar_chart(recent.writes_per_minute, overview.MINUTE_US),
        recent=recent,
        since_iso=_iso(hours[0]["hour"]) if hours else "",
        hour_ago_iso=_iso(recent.writes_per_minute[0][0]),
    )


def _iso(us: int) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(us / 1_000_000, dt.UTC).strftime("%Y-%m-%dT%H:%M")


def _events_section(connector: Connector) -> HttpResponse:
    return redirect(reverse("connector-settings", args=[connector.id]) + "#events")


@login_required
@require_POST
def subscription_create(request: HttpRequest, connector_id: str) -> HttpResponse:
    """The Settings tab's Events section: a webhook subscription; its secret shown once."""
    connector = access.connector_for(request, connector_id, Role.ADMIN)
    batch = request.POST.get("batch", "1").strip() or "1"
    data: dict = {
        "types": request.POST.getlist("types"),
        "batch": int(batch) if batch.isascii() and batch.isdigit() and len(batch) < 4 else -1,
    }
    if request.POST.get("destination") == "amqp":
        data["amqp"] = {
            name: request.POST.get(f"amqp_{name}", "").strip()
            for name in ("url", "exchange", "routing_key")
            if request.POST.get(f"amqp_{name}", "").strip()
        }
    else:
        data["webhook"] = {"url": request.POST.get("url", "").strip()}
    try:
        found, secret = subscriptions.create(
            connector, data, actor=request.user, source_ip=request.META.get("REMOTE_ADDR")
        )
    except subscriptions.InvalidSubscription as exc:
        for field, message in exc.errors.items():
            label = {
                "webhook.url": "URL",
                "types": "Event types",
                "batch": "Batch",
                "amqp.url": "Broker URL",
                "amqp.exchange": "Exchange",
                "amqp.routing_key": "Routing key",
            }.get(field, field)
            messages.error(request, f"{label}: {message}")
        return _events_section(connector)
    messages.success(
        request,
        f"Subscription {found.id} created. Its signing secret, shown this once: {secret}",
    )
    return _events_section(connector)


def _subscription(request: HttpRequest, connector_id: str, subscription_id: str):
    connector = access.connector_for(request, connector_id, Role.ADMIN)
    return connector, get_object_or_404(connector.subscriptions, pk=subscription_id)


@login_required
@require_POST
def subscription_test(request: HttpRequest, connector_id: str, subscription_id: str):
    connector, found = _subscription(request, connector_id, subscription_id)
    result = subscriptions.send_test(found)
    if result["delivered"]:
        messages.success(
            request, f"Test event delivered: the receiver answered {result['status']}."
        )
    else:
        messages.error(request, f"Test event not delivered: {result['error'] or result['status']}")
    return _events_section(connector)


@login_required
@require_POST
def subscription_replay(request: HttpRequest, connector_id: str, subscription_id: str):
    connector, found = _subscription(request, connector_id, subscription_id)
    letter = request.POST.get("letter", "")
    ids = [int(letter)] if letter.isascii() and letter.isdigit() and len(letter) < 19 else None
    if letter and ids is None:
        messages.error(request, "No such dead letter.")
        return _events_section(connector)
    count = subscriptions.request_replay(found, ids, actor=request.user)
    messages.success(request, f"{count} dead letter{'s' if count != 1 else ''} will be sent again.")
    return _events_section(connector)


@login_required
@require_POST
def subscription_rotate(request: HttpRequest, connector_id: str, subscription_id: str):
    connector, found = _subscription(request, connector_id, subscription_id)
    secret = subscriptions.rotate_secret(found, actor=request.user)
    messages.success(
        request,
        f"Subscription {found.id} has a new signing secret, shown this once: {secret}. "
        "The old one keeps signing beside it for 24 hours.",
    )
    return _events_section(connector)


@login_required
@require_POST
def subscription_redeliver(request: HttpRequest, connector_id: str, subscription_id: str):
    connector, found = _subscription(request, connector_id, subscription_id)
    try:
        since = logs.parse_time(request.POST.get("since", "").strip())
    except (ValueError, safeinput.InputError):
        messages.error(
            request, "Deliver again since: give a date/time like 2026-05-01T12:00 (UTC)."
        )
        return _events_section(connector)
    result = subscriptions.redeliver(
        found, since, actor=request.user, source_ip=request.META.get("REMOTE_ADDR")
    )
    messages.success(request, f"{result['owed']} events will be delivered again, in order.")
    return _events_section(connector)


@login_required
@require_POST
def subscription_delete(request: HttpRequest, connector_id: str, subscription_id: str):
    connector, found = _subscription(request, connector_id, subscription_id)
    subscriptions.delete(found, actor=request.user, source_ip=request.META.get("REMOTE_ADDR"))
    messages.success(request, "Subscription deleted.")
    return _events_section(connector)


@login_required
@require_POST
def connector_rename(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.ADMIN)
    form = ConnectorNameForm(request.POST)
    if form.is_valid():
        services.rename_connector(connector, request.user, form.cleaned_data["name"])
        messages.success(request, "Connector renamed.")
    else:
        messages.error(request, " ".join(form.errors.get("name", ["Invalid name."])))
    return redirect("connector-settings", connector_id=connector.id)


@login_required
def connector_delete(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.OWNER)
    if request.method == "POST":
        name = connector.name
        services.delete_connector(connector, request.user)
        messages.success(request, f"Connector “{name}” and its devices were deleted.")
        return redirect("connector-list")
    return _tab(request, connector, "settings", "connector/delete.html")


@login_required
def connector_resources(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, change=Role.ADMIN)
    form = ResourceForm(request.POST or None)
    if request.method == "POST":
        if "delete" in request.POST:
            services.set_resource(connector, request.user, request.POST["delete"], None)
            messages.success(request, f"Resource {request.POST['delete']} removed.")
            return redirect("connector-resources", connector_id=connector.id)
        if form.is_valid():
            alias = form.cleaned_data["alias"]
            services.set_resource(connector, request.user, alias, form.cleaned_data["definition"])
            messages.success(request, f"Resource {alias} saved.")
            return redirect("connector-resources", connector_id=connector.id)
    return _tab(
        request,
        connector,
        "resources",
        "connector/resources.html",
        status=400 if form.errors else 200,
        form=form,
        resources=sorted((connector.resources or {}).items()),
    )


@login_required
def connector_logs(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id)
    flt, errors = logs.LogFilter.from_params(request.GET)
    before = request.GET.get("before", "")
    events, more = [], False
    if not errors:
        events, more = logs.page(
            logs.filtered(connector, flt), before=safeinput.number_or_none(before)
        )
    query = request.GET.copy()
    query.pop("before", None)
    return _tab(
        request,
        connector,
        "logs",
        "connector/logs.html",
        events=events,
        flt=flt,
        filter_errors=errors,
        event_types=EventType.choices,
        older=events[-1].id if events and more else None,
        query=query.urlencode(),
        live=not before and not errors,
        last_id=events[0].id if events else 0,
    )


def connector_logs_feed(request: HttpRequest, connector_id: str) -> HttpResponse:
    """Rows newer than `after`, for the live Logs tab (short polling of a partial)."""
    if not request.user.is_authenticated:  # a script asks: no redirect to the sign-in page
        return HttpResponse("signed out", status=403, content_type="text/plain")
    connector = access.connector_for(request, connector_id)
    flt, errors = logs.LogFilter.from_params(request.GET)
    after = safeinput.number_or_none(request.GET.get("after", ""))
    if errors or after is None:
        return HttpResponse("bad filter", status=400, content_type="text/plain")
    events = logs.newer(logs.filtered(connector, flt), after)
    response = render(request, "connector/_event_rows.html", {"events": events})
    response["X-Last-Id"] = str(events[0].id if events else after)
    response["Cache-Control"] = "no-store"
    return response


# --- Content tab ------------------------------------------------------------------------------


@login_required
def connector_content(request: HttpRequest, connector_id: str) -> HttpResponse:
    """The content area: items with their size, sha256, uploader and downloads, the quota,
    an upload form. With JavaScript the page uploads through a descriptor (straight to the
    store on S3) with a progress bar; without, this view takes the file itself."""
    connector = access.connector_for(request, connector_id)
    return _content_page(request, connector)


def _content_page(request, connector: Connector, status: int = 200, error: str = "", **extra):
    content.settle_pending(connector)
    found = list(content.items(connector))
    base = content_api.device_base_url(request, connector)
    return _tab(
        request,
        connector,
        "content",
        "connector/content.html",
        status=status,
        items=found,
        usage=content.usage(connector),
        device_base=base,
        max_bytes=settings.CONTENT_MAX_BYTES,
        error=error,
        on_s3=content.on_s3(),
        **extra,
    )


@csrf_exempt  # checked below, once the upload handler is in place (CSRF reads the body)
@login_required
def content_upload_form(request: HttpRequest, connector_id: str) -> HttpResponse:
    """The upload form without JavaScript: the file in this request, hashed as it is read."""
    connector = access.connector_for(request, connector_id, Role.ADMIN)
    if request.method != "POST":
        return redirect("connector-content", connector_id=connector_id)
    handler = content.UploadHandler(settings.CONTENT_MAX_BYTES)
    request.upload_handlers = [handler]
    return _take_upload(request, connector, handler)


@csrf_protect
def _take_upload(request, connector: Connector, handler) -> HttpResponse:
    try:
        if request.FILES.get("file") is None or handler.writer is None:
            raise content.ContentError(400, "file", "choose a file to upload")
        name = request.POST.get("name") or content.name_from_file(request.FILES["file"].name)
        upload = content.start_upload(
            connector,
            name,
            content_type=request.POST.get("type") or request.FILES["file"].content_type,
            sha256=request.POST.get("sha256"),
            description=request.POST.get("description"),
            actor=request.user,
            upload_url=content_api.upload_url_maker(request),
            sha256_required=False,
        ).upload
        item = content.receive_upload(upload, handler.writer, request.META.get("REMOTE_ADDR"))
    except content.ContentError as exc:
        handler.discard()
        return _content_page(request, connector, status=exc.status, error=exc.message)
    messages.success(request, f"{item.name} uploaded ({item.size} bytes, sha256 {item.sha256}).")
    return redirect("connector-content", connector_id=connector.id)


@login_required
@require_POST
def content_descriptor(request: HttpRequest, connector_id: str) -> JsonResponse:
    """For the page's script: an upload descriptor, as the management API gives one."""
    connector = access.connector_for(request, connector_id, Role.ADMIN)
    try:
        descriptor = content.start_upload(
            connector,
            request.POST.get("name", ""),
            content_type=request.POST.get("type"),
            sha256=request.POST.get("sha256"),
            description=request.POST.get("description"),
            actor=request.user,
            upload_url=content_api.upload_url_maker(request),
            sha256_required=False,
        )
    except content.ContentError as exc:
        return JsonResponse({exc.field or "detail": exc.message}, status=exc.status)
    return JsonResponse(descriptor.json())


@login_required
def content_delete(request: HttpRequest, connector_id: str, name: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.ADMIN)
    item = get_object_or_404(content.items(connector), name=name)
    if request.method == "POST":
        content.delete_item(connector, name, actor=request.user, ip=request.META.get("REMOTE_ADDR"))
        messages.success(request, f"{name} deleted.")
        return redirect("connector-content", connector_id=connector.id)
    return _tab(request, connector, "content", "connector/content_delete.html", item=item)


# --- Members tab, invitations, API tokens -----------------------------------------------------


def _ip(request: HttpRequest) -> str | None:
    return request.META.get("REMOTE_ADDR")


@login_required
def connector_members(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id)
    return _members_page(request, connector)


def _members_page(request, connector: Connector, status: int = 200, **extra) -> HttpResponse:
    return _tab(
        request,
        connector,
        "members",
        "connector/members.html",
        status=status,
        members=members.members(connector),
        invitations=members.open_invitations(connector) if connector.can.own else [],
        roles=[(role, role.label, access.DESCRIPTIONS[role]) for role in access.ROLES],
        owners=sum(1 for m in members.members(connector) if m.role == Role.OWNER),
        **extra,
    )


@login_required
@require_POST
def member_invite(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.OWNER)
    try:
        invited = members.invite(
            connector,
            request.user,
            request.POST.get("email", ""),
            request.POST.get("role", ""),
            link_for=members_api.link_maker(request),
            ip=_ip(request),
        )
    except members.MemberError as exc:
        return _members_page(
            request,
            connector,
            status=exc.status if exc.status < 500 else 400,
            invite_error={exc.field: exc.message},
            invite_values=request.POST,
        )
    if invited.emailed:
        messages.success(request, f"Invitation sent to {invited.invitation.email}.")
        return redirect("connector-members", connector_id=connector.id)
    # No email backend: the link is shown this once (only its hash is stored).
    return _members_page(
        request,
        connector,
        status=201,
        new_link=members_api.link_maker(request)(invited.token),
        new_invitation=invited.invitation,
    )


def _member(connector: Connector, member_id: int):
    return get_object_or_404(connector.memberships.select_related("user"), pk=member_id)


@login_required
@require_POST
def member_role(request: HttpRequest, connector_id: str, member_id: int) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.OWNER)
    target = _member(connector, member_id)
    try:
        members.change_role(
            connector, request.user, target.user.email, request.POST.get("role"), ip=_ip(request)
        )
        messages.success(request, f"{target.user.email} is now {request.POST.get('role')}.")
    except members.MemberError as exc:
        messages.error(request, exc.message)
    return redirect("connector-members", connector_id=connector.id)


@login_required
@require_POST
def member_remove(request: HttpRequest, connector_id: str, member_id: int) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.OWNER)
    target = _member(connector, member_id)
    try:
        members.remove(connector, request.user, target.user.email, ip=_ip(request))
    except members.MemberError as exc:
        messages.error(request, exc.message)
        return redirect("connector-members", connector_id=connector.id)
    if target.user_id == request.user.pk:
        messages.success(request, f"You left “{connector.name}”.")
        return redirect("connector-list")
    messages.success(request, f"{target.user.email} removed.")
    return redirect("connector-members", connector_id=connector.id)


@login_required
@require_POST
def member_leave(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id)
    try:
        members.remove(connector, request.user, request.user.email, ip=_ip(request))
    except members.MemberError as exc:
        messages.error(request, exc.message)
        return redirect("connector-members", connector_id=connector.id)
    messages.success(request, f"You left “{connector.name}”.")
    return redirect("connector-list")


@login_required
@require_POST
def invitation_revoke(request: HttpRequest, connector_id: str, invitation_id: int):
    connector = access.connector_for(request, connector_id, Role.OWNER)
    try:
        members.revoke_invitation(connector, request.user, invitation_id, ip=_ip(request))
        messages.success(request, "Invitation revoked: its link no longer works.")
    except members.MemberError as exc:
        messages.error(request, exc.message)
    return redirect("connector-members", connector_id=connector.id)


def invitation(request: HttpRequest, token: str) -> HttpResponse:
    """An invitation link: who invites whom to what; accepting needs the invited account."""
    found = members.find_invitation(token)
    if found is None:
        return render(request, "connector/invitation.html", {"invalid": True}, status=404)
    context = {"invitation": found, "token": token, "signup": members.signup_mode() != "closed"}
    if request.method == "POST" and request.user.is_authenticated:
        try:
            members.accept(token, request.user, ip=_ip(request))
        except members.MemberError as exc:
            context["error"] = exc.message
            return render(request, "connector/invitation.html", context, status=exc.status)
        messages.success(
            request, f"You joined “{found.connector.name}” as {found.get_role_display()}."
        )
        return redirect("connector-settings", connector_id=found.connector_id)
    if request.method == "POST":
        return redirect(f"{reverse('login')}?{urlencode({'next': request.path})}")
    return render(request, "connector/invitation.html", context)


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    """The account's management API tokens: create one (scoped or not), see, revoke."""
    context: dict = {
        "connectors": Connector.objects.for_user(request.user).order_by("name"),
        "roles": access.ROLES,
        "max_days": settings.API_TOKEN_LIFETIME_DAYS,
    }
    status = 200
    if request.method == "POST":
        days = request.POST.get("days", "").strip()
        ttl = int(days) * 86400 if days.isascii() and days.isdigit() and len(days) < 6 else days
        ttl = None if days == "" else ttl
        try:
            clear, token = members.create_token(
                request.user,
                name=request.POST.get("name", ""),
                connector_id=request.POST.get("connector") or None,
                role=request.POST.get("role") or None,
                ttl=ttl,
                ip=_ip(request),
            )
            context.update(new_token=clear, new=token)
            status = 201
        except members.MemberError as exc:
            error = {exc.field: exc.message}
            if exc.field == "ttl":
                max_days = settings.API_TOKEN_LIFETIME_DAYS
                error = {"days": f"Give the lifetime in whole days, 1 to {max_days}."}
            context.update(error=error, values=request.POST)
            status = 400
    context["tokens"] = members.user_tokens(request.user)
    return render(request, "connector/tokens.html", context, status=status)


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(request.user.api_tokens, pk=token_id)
    if members.revoke_token(token, ip=_ip(request)):
        messages.success(request, f"Token {token.name or token.pk} revoked.")
    return redirect("token-list")
