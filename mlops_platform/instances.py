"""The instances of a scaled service in local mode: names, ports, settings and health of each.

A service with `scaling` (services.Scaling) runs as `count` instances, each a supervised program of its
own with its own log, pid file and port. Instance 1 carries the service's name (`serving`), instance i
`<service>-<i>` (`serving-2`): with one instance, nothing differs from an unscaled service. An instance is
a services.Service too (`instance_of` names its service, `instance_variables` what it gets on top of the
platform's environment), so starting, stopping, supervising and checking it is what it is for any
service. `up` runs the instances the setting asks for; `down` and `status` also see instances an
earlier `up` started with a larger count (found in supervisord and in the pid files).
"""

from __future__ import annotations

import dataclasses
import re

from mlops_platform import health, supervisor
from mlops_platform.services import BY_NAME, Service, pid_file
from mlops_platform.settings import Settings, setting_variables


def instance_name(service: Service, index: int) -> str:
    return service.name if index == 1 else f"{service.name}-{index}"


def with_variables(settings: Settings, variables: dict[str, str]) -> Settings:
    """The settings as a process with these environment variables on top sees them."""
    if not variables:
        return settings
    attributes = setting_variables()
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    changes = {}
    for variable, raw in variables.items():
        attribute = attributes[variable]
        changes[attribute] = fields[attribute].metadata["parse"](variable, raw)
    return dataclasses.replace(settings, **changes)


def instance(service: Service, settings: Settings, index: int) -> Service:
    """Instance `index` (1-based) of a scaled service, as a service of its own."""
    if service.scaling is None:
        raise ValueError(f"{service.name} is not a scaled service (no `scaling` in the service table)")
    variables = service.scaling.variables(settings, index)

    def own(value):  # a port or URL of the service, seen with this instance's variables
        return None if value is None else (lambda s: value(with_variables(s, variables)))

    return dataclasses.replace(service, name=instance_name(service, index), port=own(service.port),
                               url=own(service.url), scaling=None, instance_of=service.name,
                               instance_variables=variables)


def planned(service: Service, settings: Settings) -> list[Service]:
    """The instances `up` runs: 1..count (the service itself when it is not scaled)."""
    if service.scaling is None:
        return [service]
    return [instance(service, settings, i) for i in range(1, service.scaling.count(settings) + 1)]


def known_indexes(service: Service, settings: Settings) -> set[int]:
    """Indexes of the service's instances that supervisord runs or a pid file records (any earlier count)."""
    pattern = re.compile(rf"^{re.escape(service.name)}-(\d+)$")
    names = set(supervisor.programs(settings))
    run = pid_file(settings, service.name).parent
    if run.is_dir():
        names |= {path.stem for path in run.glob(f"{service.name}-*.pid")}
    indexes = {int(match.group(1)) for name in names if (match := pattern.match(name))}
    return {i for i in indexes if i >= 2}


def every(service: Service, settings: Settings) -> list[Service]:
    """The planned instances and any other known one, by index (what `down`, `status` and `logs` cover)."""
    if service.scaling is None:
        return [service]
    count = service.scaling.count(settings)
    indexes = sorted(set(range(1, count + 1)) | known_indexes(service, settings))
    return [instance(service, settings, i) for i in indexes]


def surplus(service: Service, settings: Settings) -> list[Service]:
    """Known instances beyond the count: what `up` with a smaller count stops."""
    if service.scaling is None:
        return []
    count = service.scaling.count(settings)
    return [instance(service, settings, i) for i in sorted(known_indexes(service, settings)) if i > count]


def expand(services: list[Service], settings: Settings) -> list[Service]:
    return [one for service in services for one in every(service, settings)]


def check(service: Service, settings: Settings) -> tuple[bool, str]:
    """The service's health check, run against this instance's own port (health.check never raises)."""
    return health.check(service.instance_of or service.name, with_variables(settings, service.instance_variables))


def front_of(service: Service) -> Service | None:
    """The balancer in front of a scaled service (serving-lb for serving), if it has one."""
    base = BY_NAME.get(service.instance_of or service.name)
    if base is None or base.scaling is None or not base.scaling.front:
        return None
    return BY_NAME[base.scaling.front]
