"""The Devices tab: list, filters, bulk actions, add one, import many, device page."""

from __future__ import annotations

import csv
import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from connector import access
from connector.identity import identity_error
from connector.models import Connector, Event, now_us
from devices import charts, history, listing, services, staging
from devices.forms import AddDeviceForm, ImportForm, TagsForm, tags_text
from devices.importer import HEADER_HELP, escape_cell, import_identities
from devices.models import Device, DeviceSession, Status
from provisioning.mqtt import device as mqtt_sessions

Role = access.Role


def _render(request, connector: Connector, template: str, status: int = 200, **context):
    context.update(connector=connector, tab="devices", statuses=list(Status))
    return render(request, template, context, status=status)


@login_required
def device_list(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id)
    flt, errors = listing.DeviceFilter.from_params(request.GET, tag_param=False)
    now = now_us()
    rows, more_after, more_before = [], False, False
    if not errors:
        rows, more_after, more_before = listing.page(
            listing.filtered(connector, flt, now),
            after=request.GET.get("after", ""),
            before=request.GET.get("before", ""),
        )
    connected = mqtt_sessions.connected_sessions(d.pk for d in rows)
    query = request.GET.copy()
    for key in ("after", "before"):
        query.pop(key, None)
    return _render(
        request,
        connector,
        "devices/list.html",
        rows=[(d, d.status_at(now), connected.get(d.pk)) for d in rows],
        flt=flt,
        filter_errors=errors,
        next_after=rows[-1].identity if rows and more_after else "",
        prev_before=rows[0].identity if rows and more_before else "",
        query=query.urlencode(),
        total_known=Device.objects.filter(connector=connector).exists(),
    )


def _bulk_need(request: HttpRequest) -> str:
    """Locking is an operator's; deleting, an admin's."""
    return Role.ADMIN if request.POST.get("action") == "delete" else Role.OPERATOR


@login_required
@require_POST
def device_bulk(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, _bulk_need(request))
    identities = request.POST.getlist("identity")
    action = request.POST.get("action")
    back = redirect(reverse("device-list", args=[connector.id]) + _return_query(request))
    if not identities:
        messages.error(request, "Select at least one device first.")
        return back
    selected = Device.objects.filter(connector=connector, identity__in=identities)
    if action in ("lock", "unlock"):
        count = services.set_locked(connector, selected, action == "lock", actor=request.user)
        messages.success(
            request,
            f"{'Locked' if action == 'lock' else 'Unlocked'} {count} "
            f"device{'s' if count != 1 else ''}.",
        )
        return back
    if action == "delete":
        if request.POST.get("confirm") != "yes":
            return _render(
                request,
                connector,
                "devices/confirm_delete.html",
                identities=sorted(selected.values_list("identity", flat=True)),
                return_query=request.POST.get("return_query", ""),
            )
        count = services.delete_devices(connector, selected, actor=request.user)
        messages.success(request, f"Deleted {count} device{'s' if count != 1 else ''}.")
        return back
    messages.error(request, "Unknown action.")
    return back


def _return_query(request: HttpRequest) -> str:
    query = request.POST.get("return_query", "")
    return "?" + query if query and "\n" not in query else ""


class _Echo:
    def write(self, value: str) -> str:
        return value


@login_required
@require_GET
def device_export(request: HttpRequest, connector_id: str) -> HttpResponse:
    """The filtered list as CSV in the import format, streamed in keyset pages."""
    connector = access.connector_for(request, connector_id)
    flt, errors = listing.DeviceFilter.from_params(request.GET, tag_param=False)
    if errors:
        return HttpResponse("; ".join(errors.values()), status=400, content_type="text/plain")
    qs = listing.filtered(connector, flt)
    writer = csv.writer(_Echo())

    def rows():
        yield "\ufeff" + writer.writerow(HEADER_HELP.split(","))
        after = ""
        while True:
            batch, more, _ = listing.page(qs, after=after, limit=listing.MAX_LIMIT)
            for device in batch:
                tags = device.tag_list
                yield writer.writerow(
                    [
                        escape_cell(device.identity),
                        escape_cell(device.cert_pem),
                        _json(tags) if tags else "",
                    ]
                )
            if not more:
                return
            after = batch[-1].identity

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{connector.id}-devices.csv"'
    return response


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


@login_required
def device_add(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.OPERATOR)
    form = AddDeviceForm(
        request.POST or None, initial={"activation_hours": connector.activation_period_hours}
    )
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        if "BEGIN CERTIFICATE REQUEST" in data["certificate"]:
            return _add_with_csr(request, connector, form)
        try:
            device = services.whitelist_device(
                connector,
                data["identity"],
                actor=request.user,
                activation_hours=data["activation_hours"],
                cert_pem=data["certificate"],
                tags=data["tags"],
                source_ip=request.META.get("REMOTE_ADDR"),
            )
        except services.InvalidInput as exc:
            for key, message in exc.errors.items():
                form.add_error(AddDeviceForm.FIELD_FOR.get(key), message)
        except services.DeviceExists:
            form.add_error("identity", "This identity is already whitelisted in this connector.")
        else:
            messages.success(request, f"Device {device.identity} whitelisted.")
            return redirect("device-list", connector_id=connector.id)
    return _render(
        request,
        connector,
        "devices/add.html",
        status=400 if form.errors else 200,
        form=form,
        format_description=connector.identity_format.describe(),
    )


def _add_with_csr(request: HttpRequest, connector: Connector, form: AddDeviceForm):
    """A CSR pasted instead of a certificate: the connector's signer issues the certificate."""
    data = form.cleaned_data
    expire = now_us() + data["activation_hours"] * services.HOUR_US
    try:
        certificate = services.enable_with_csr(
            connector,
            data["identity"],
            data["certificate"],
            actor=request.user,
            expire=expire,
            tags=data["tags"],
            source_ip=request.META.get("REMOTE_ADDR"),
        )
    except services.InvalidInput as exc:
        for key, message in exc.errors.items():
            form.add_error(AddDeviceForm.FIELD_FOR.get(key, "certificate"), message)
    except services.DeviceExists:
        form.add_error("identity", "This identity is already whitelisted in this connector.")
    else:
        return _render(
            request,
            connector,
            "devices/issued.html",
            identity=data["identity"],
            certificate=certificate,
        )
    return _render(
        request,
        connector,
        "devices/add.html",
        status=400,
        form=form,
        format_description=connector.identity_format.describe(),
    )


@login_required
@require_GET
def identity_check(request: HttpRequest, connector_id: str) -> JsonResponse:
    """As-you-type check of an identity against the connector's format (same function)."""
    connector = access.connector_for(request, connector_id, Role.OPERATOR)
    identity = request.GET.get("identity", "")
    reason = identity_error(identity, connector.identity_format)
    exists = (
        reason is None and Device.objects.filter(connector=connector, identity=identity).exists()
    )
    return JsonResponse(
        {
            "valid": reason is None and not exists,
            "reason": reason or ("already whitelisted" if exists else ""),
        }
    )


@login_required
def device_import(request: HttpRequest, connector_id: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.OPERATOR)
    if request.method == "POST" and "token" in request.POST:
        return _import_confirmed(request, connector)
    form = ImportForm(request.POST or None, request.FILES or None)
    report = token = None
    if request.method == "POST" and form.is_valid():
        upload, update = form.cleaned_data["identities"], form.cleaned_data["update"]
        report = import_identities(connector, upload, update=update, dry_run=True)
        if report.ok:
            token = staging.stage(upload, connector.id, request.user.pk, update)
    return _render(
        request,
        connector,
        "devices/import.html",
        status=400 if report is not None and not report.ok else 200,
        form=form,
        report=report,
        token=token,
    )


def _import_confirmed(request: HttpRequest, connector: Connector) -> HttpResponse:
    found = staging.staged(request.POST["token"], connector.id, request.user.pk)
    if found is None:
        messages.error(request, "That upload has expired; choose the file again.")
        return redirect("device-import", connector_id=connector.id)
    path, update = found
    with path.open("rb") as fh:
        report = import_identities(
            connector,
            fh,
            update=update,
            actor=request.user,
            source_ip=request.META.get("REMOTE_ADDR"),
        )
    path.unlink(missing_ok=True)
    if not report.ok:  # the connector's format changed, or rows were added meanwhile
        return _render(
            request,
            connector,
            "devices/import.html",
            status=400,
            form=ImportForm(),
            report=report,
            token=None,
        )
    messages.success(
        request,
        f"{report.created} whitelisted, {report.updated} updated, "
        f"{report.skipped} skipped (already there).",
    )
    return redirect("device-list", connector_id=connector.id)


def _device(request: HttpRequest, connector: Connector, identity: str) -> Device:
    return get_object_or_404(
        listing.with_details(Device.objects.all()), connector=connector, identity=identity
    )


@login_required
def device_detail(request: HttpRequest, connector_id: str, identity: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, change=Role.OPERATOR)
    device = _device(request, connector, identity)
    tags_form = TagsForm(initial={"tags": tags_text(device.tag_list)})
    if request.method == "POST":
        action = request.POST.get("action")
        if action == "tags":
            tags_form = TagsForm(request.POST)
            if tags_form.is_valid():
                services.update_device(
                    device, actor=request.user, tags=tags_form.cleaned_data["tags"]
                )
                messages.success(request, "Tags saved.")
                return redirect("device-detail", connector_id=connector.id, identity=identity)
        elif action in ("lock", "unlock"):
            services.update_device(device, actor=request.user, locked=action == "lock")
            messages.success(request, "Device locked." if action == "lock" else "Device unlocked.")
            return redirect("device-detail", connector_id=connector.id, identity=identity)
        elif action == "set":
            try:
                services.set_state(
                    device,
                    {request.POST.get("alias", ""): request.POST.get("value", "")},
                    actor=request.user,
                )
            except services.InvalidInput as exc:
                messages.error(request, " ".join(exc.errors.values()))
            else:
                messages.success(request, "Value set: the device reads it from now on.")
            return redirect("device-detail", connector_id=connector.id, identity=identity)
        elif action == "revoke":
            services.revoke_device(device, actor=request.user)
            messages.success(request, "Credential revoked: the device must provision again.")
            return redirect("device-detail", connector_id=connector.id, identity=identity)
    events = Event.objects.filter(connector=connector, identity=identity).order_by("-id")[:50]
    values = list(device.values.order_by("alias")[:200])
    for value in values:  # the unit beside each value
        value.unit = (connector.resources or {}).get(value.alias, {}).get("unit", "")
    chosen, since, until, range_errors = history.chart_range(request.GET)
    return _render(
        request,
        connector,
        "devices/detail.html",
        status=400 if tags_form.errors else 200,
        history=_history(connector, device, values, since, until),
        range=chosen,
        range_choices=[("hour", "Hour"), ("day", "Day"), ("week", "Week"), ("custom", "Custom")],
        range_errors=range_errors,
        range_from=request.GET.get("from", ""),
        range_to=request.GET.get("to", ""),
        device=device,
        status_now=device.status,
        connected_since=mqtt_sessions.connected_sessions([device.pk]).get(device.pk),
        session=DeviceSession.objects.filter(device=device).first(),
        tags_form=tags_form,
        events=events,
        values=values,
        settable=sorted(a for a, d in (connector.resources or {}).items() if d.get("settable")),
    )


def _history(connector: Connector, device: Device, values, since: int, until: int) -> list:
    """Per alias: a chart for numbers, a table for strings and booleans, over the range."""
    resources = connector.resources or {}
    latest = {v.alias: v for v in values}
    found = []
    for alias in sorted(set(resources) | set(latest)):
        definition = resources.get(alias, {})
        points = history.series(device, alias, since, until)
        entry = {
            "alias": alias,
            "unit": definition.get("unit", ""),
            "settable": bool(definition.get("settable")),
            "set": latest[alias].set if alias in latest else None,
            "count": len(points),
            "truncated": len(points) >= history.SERIES_MAX_POINTS,
        }
        if definition.get("format") == "number":
            entry["chart"] = charts.line_chart(
                alias, points, since, until, unit=entry["unit"], set_value=entry["set"]
            )
        else:
            entry["rows"] = [(ts, value) for ts, value in reversed(points[-history.TABLE_ROWS :])]
        found.append(entry)
    return found


@login_required
def device_history_csv(request: HttpRequest, connector_id: str, identity: str):
    """The history API's points as CSV (time, µs, value), newest first, streamed."""
    connector = access.connector_for(request, connector_id)
    device = _device(request, connector, identity)
    try:
        query = history.parse(request.GET)
    except history.HistoryError as exc:
        text = "; ".join(f"{field}: {message}" for field, message in exc.errors.items())
        return HttpResponse(text + "\n", status=400, content_type="text/plain; charset=utf-8")
    writer = csv.writer(_Echo())

    def lines():
        yield writer.writerow(("time", "timestamp_us", escape_cell(query.alias)))
        for iso, ts, value in history.export_rows(device, query):
            yield writer.writerow((iso, ts, escape_cell(value)))

    response = StreamingHttpResponse(lines(), content_type="text/csv; charset=utf-8")
    name = f"{device.identity}-{query.alias}.csv".replace('"', "")
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@login_required
def device_delete(request: HttpRequest, connector_id: str, identity: str) -> HttpResponse:
    connector = access.connector_for(request, connector_id, Role.ADMIN)
    device = _device(request, connector, identity)
    if request.method == "POST":
        services.delete_devices(connector, Device.objects.filter(pk=device.pk), actor=request.user)
        messages.success(request, f"Device {identity} deleted.")
        return redirect("device-list", connector_id=connector.id)
    return _render(
        request, connector, "devices/confirm_delete.html", identities=[identity], single=True
    )
