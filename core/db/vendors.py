"""Vendors, their API keys (stored hashed), webhook secrets and per-vendor rate limits."""
from __future__ import annotations

import json
from typing import Any

from core.db.engine import Engine, _Integrity, _iso, _now, log


class Vendors(Engine):
    """Vendor rows and what hangs off them."""

    def create_vendor(self, vendor_id: str, name: str) -> None:
        """Add a vendor; ValueError if the id is taken."""
        try:
            self._write("INSERT INTO vendors (id, name, created_at) VALUES (?, ?, ?)",
                        (vendor_id, name, _now()))
        except _Integrity as exc:
            raise ValueError(f"vendor {vendor_id!r} already exists") from exc

    def get_vendor(self, vendor_id: str) -> dict[str, Any] | None:
        """The vendor's row, or None."""
        row = self._fetch_one("SELECT id, name, created_at, settings_json FROM vendors WHERE id = ?",
                              (vendor_id,))
        if row is not None:
            row["created_at"] = _iso(row["created_at"])
        return row

    def add_api_key(self, vendor_id: str, key_prefix: str, key_hash: str) -> None:
        """Store a key's sha256 hex for a vendor; ValueError for an unknown vendor or duplicate hash."""
        try:
            self._write("INSERT INTO api_keys (vendor_id, key_prefix, key_hash, created_at)"
                        " VALUES (?, ?, ?, ?)", (vendor_id, key_prefix, key_hash, _now()))
        except _Integrity as exc:
            raise ValueError(f"cannot add key for vendor {vendor_id!r}: unknown vendor or duplicate key") \
                from exc

    def vendor_for_key_hash(self, key_hash: str) -> str | None:
        """The vendor owning this unrevoked key hash, or None."""
        row = self._fetch_one("SELECT vendor_id FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                              (key_hash,))
        return None if row is None else str(row["vendor_id"])

    def revoke_api_keys(self, vendor_id: str) -> int:
        """Revoke every active key of the vendor; returns how many were revoked."""
        return self._write("UPDATE api_keys SET revoked_at = ? WHERE vendor_id = ? AND revoked_at IS NULL",
                           (_now(), vendor_id))

    def get_webhook_secret(self, vendor_id: str) -> str | None:
        """The vendor's webhook signing secret (None: unknown vendor or none set)."""
        row = self._fetch_one("SELECT webhook_secret FROM vendors WHERE id = ?", (vendor_id,))
        return None if row is None or not row["webhook_secret"] else str(row["webhook_secret"])

    def set_webhook_secret(self, vendor_id: str, secret: str) -> None:
        """Store (replace) the vendor's webhook signing secret; KeyError for an unknown vendor."""
        if not self._write("UPDATE vendors SET webhook_secret = ? WHERE id = ?", (secret, vendor_id)):
            raise KeyError(vendor_id)

    # --- per-vendor settings (vendors.settings_json) -------------------------------------------
    @staticmethod
    def _vendor_settings(vendor_id: str, text: Any) -> dict[str, Any]:
        try:
            value = json.loads(text) if text else {}
        except ValueError:
            value = None
        if not isinstance(value, dict):
            log.warning("vendor=%s settings_json is not a JSON object; ignoring it", vendor_id)
            return {}
        return value

    def get_vendor_limits(self, vendor_id: str) -> dict[str, str] | None:
        """The vendor's rate-limit overrides ({category: limit string}); None for an unknown vendor."""
        row = self._fetch_one("SELECT settings_json FROM vendors WHERE id = ?", (vendor_id,))
        if row is None:
            return None
        stored = self._vendor_settings(vendor_id, row["settings_json"]).get("rateLimits")
        if not isinstance(stored, dict):
            return {}
        return {str(k): v for k, v in stored.items() if isinstance(v, str)}

    def set_vendor_limits(self, vendor_id: str, changes: dict[str, str | None], *,
                          replace: bool = False) -> dict[str, str]:
        """Merge rate-limit overrides into the vendor's settings (None removes one; ``replace``
        drops the others first); returns the overrides now stored. KeyError for an unknown vendor.

        Other keys of settings_json are kept. The caller validates the limit strings.
        """
        lock = " FOR UPDATE" if self.dialect.name == "mysql" else ""

        def work(cur: Any) -> dict[str, str]:
            row = self._execute(cur, "SELECT settings_json FROM vendors WHERE id = ?" + lock,
                                (vendor_id,)).fetchone()
            if row is None:
                raise KeyError(vendor_id)
            settings = self._vendor_settings(vendor_id, row[0])
            stored = settings.get("rateLimits")
            current: dict[str, str] = {}
            if isinstance(stored, dict) and not replace:
                current = {str(k): v for k, v in stored.items() if isinstance(v, str)}
            for category, value in changes.items():
                if value is None:
                    current.pop(category, None)
                else:
                    current[category] = value
            if current:
                settings["rateLimits"] = current
            else:
                settings.pop("rateLimits", None)
            self._execute(cur, "UPDATE vendors SET settings_json = ? WHERE id = ?",
                          (json.dumps(settings, sort_keys=True) if settings else None, vendor_id))
            return current
        return self._transaction(work)
