"""A node's addresses and inbound endpoints, as the service derives them from its pool.

- A pool whose ``publicIPAddressConfiguration.ipFamilies`` holds ``IPv6`` gives its nodes an
  ``ipv6Address`` (besides the ``ipAddress`` pools.py gives every node), and their remote login settings
  an ``ipv6RemoteLoginIPAddress``/``ipv6RemoteLoginPort``.
- ``endpointConfiguration.inboundEndpoints`` has one endpoint per ``inboundNATPools`` entry of the pool's
  ``networkConfiguration.endpointConfiguration``: named ``<pool name>.<node index>``, its frontend port the
  pool's ``frontendPortRangeStart`` plus the node's index (recorded: a pool with NAT pool ``ruleName``
  from port 15000 to backend 3389 lists ``ruleName.0``, frontend 15000, backend 3389; reference
  recordings tasks-files_sync_2025-06-01.json). A pool without NAT pools gets the service's default
  remote access endpoint (SSH on Linux, RDP on Windows) from port 50000. A pool provisioned with
  ``nopublicipaddresses`` has no public endpoint at all.
"""

from __future__ import annotations

from typing import Any

__all__ = ["node_addresses", "remote_login_settings", "node_extensions"]

#: The public address and name every emulated endpoint answers on: this machine.
PUBLIC_IP = "127.0.0.1"
PUBLIC_IPV6 = "::1"
PUBLIC_FQDN = "localhost"
#: Where the service's default remote access endpoints start (docs: "Configure remote access to
#: compute nodes in an Azure Batch pool": ports 50000 and up).
DEFAULT_FRONTEND_START = 50000


def _network(pool: dict[str, Any]) -> dict[str, Any]:
    return dict(pool.get("networkConfiguration") or {})


def _is_windows(pool: dict[str, Any]) -> bool:
    agent = str((pool.get("virtualMachineConfiguration") or {}).get("nodeAgentSKUId") or "")
    return "windows" in agent.lower()


def _ipv6(pool: dict[str, Any]) -> bool:
    families = (_network(pool).get("publicIPAddressConfiguration") or {}).get("ipFamilies") or []
    return any(str(f).lower() == "ipv6" for f in families)


def _nat_pools(pool: dict[str, Any]) -> list[dict[str, Any]]:
    configured = (_network(pool).get("endpointConfiguration") or {}).get("inboundNATPools")
    if configured:
        return [dict(p) for p in configured]
    windows = _is_windows(pool)
    return [
        {
            "name": "RDPRule" if windows else "SSHRule",
            "protocol": "tcp",
            "backendPort": 3389 if windows else 22,
            "frontendPortRangeStart": DEFAULT_FRONTEND_START,
        }
    ]


def node_addresses(pool: dict[str, Any], seq: int, index: int) -> dict[str, Any]:
    """The IPv6 and endpoint fields of node number ``seq`` of the account, index ``index`` in ``pool``."""
    out: dict[str, Any] = {}
    if _ipv6(pool):
        out["ipv6Address"] = f"fd00::a:{seq:x}"
    provision = str((_network(pool).get("publicIPAddressConfiguration") or {}).get("provision") or "")
    if provision.lower() == "nopublicipaddresses":
        return out
    out["endpointConfiguration"] = {
        "inboundEndpoints": [
            {
                "name": f"{nat['name']}.{index}",
                "protocol": str(nat.get("protocol") or "tcp"),
                "publicIPAddress": PUBLIC_IP,
                "publicFQDN": PUBLIC_FQDN,
                "frontendPort": int(nat.get("frontendPortRangeStart", DEFAULT_FRONTEND_START)) + index,
                "backendPort": int(nat["backendPort"]),
            }
            for nat in _nat_pools(pool)
        ]
    }
    return out


def remote_login_settings(pool: dict[str, Any], node: dict[str, Any]) -> dict[str, Any] | None:
    """``GET .../remoteloginsettings``: the endpoint that reaches SSH (22) or RDP (3389); None without one."""
    endpoints = (node.get("endpointConfiguration") or {}).get("inboundEndpoints") or []
    wanted = 3389 if _is_windows(pool) else 22
    endpoint = next((e for e in endpoints if int(e["backendPort"]) == wanted), None)
    if endpoint is None:
        return None
    out: dict[str, Any] = {
        "remoteLoginIPAddress": endpoint["publicIPAddress"],
        "remoteLoginPort": int(endpoint["frontendPort"]),
    }
    if node.get("ipv6Address"):
        out["ipv6RemoteLoginIPAddress"] = PUBLIC_IPV6
        out["ipv6RemoteLoginPort"] = int(endpoint["frontendPort"])
    return out


def _succeeded(name: str, message: str) -> dict[str, Any]:
    return {
        "name": name,
        "statuses": [
            {
                "code": "ProvisioningState/succeeded",
                "level": "Info",
                "displayStatus": "Provisioning succeeded",
                "message": message,
            }
        ],
    }


def node_extensions(pool: dict[str, Any]) -> list[dict[str, Any]]:
    """``GET .../extensions``: the Batch node extension, then the pool's own ``extensions``.

    As Microsoft's example for Nodes_ListNodeExtensions shows: ``batchNodeExtension`` (the agent's
    CustomScript extension) first, each with a succeeded provisioning status.
    """
    agent: dict[str, Any] = {
        "name": "batchNodeExtension",
        "publisher": "Microsoft.Azure.Extensions",
        "type": "CustomScript",
        "typeHandlerVersion": "2.0",
        "autoUpgradeMinorVersion": True,
    }
    out = [
        {
            "vmExtension": agent,
            "instanceView": _succeeded(agent["name"], "Enable succeeded: Enabling and starting agent and controller"),
        }
    ]
    for ext in (pool.get("virtualMachineConfiguration") or {}).get("extensions") or []:
        shown = {k: v for k, v in ext.items() if k != "protectedSettings"}  # never returned, as a secret
        out.append(
            {
                "vmExtension": shown,
                "instanceView": _succeeded(str(ext.get("name")), "ExtensionOperation:enable. Status:Success"),
            }
        )
    return out
