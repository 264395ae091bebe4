"""Meters: registered on their own or implied by a plan's charges, listed, and checked
against the charges that price them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from eventsourcing.persistence import IntegrityError

from billing_domain.bounds import MAX_PROPERTY_KEY_LENGTH, MAX_UNIT_LENGTH, check_id, check_text
from billing_domain.core import ApplicationCore, check_identifier
from billing_domain.errors import InvalidInput, MeterConflict, MeterNotFound
from billing_domain.identity import SYSTEM, Principal
from billing_domain.ids import meter_uuid
from billing_domain.meter import METER_AGGREGATIONS, Meter, MeterDefinition


def _contradiction(
    known: MeterDefinition, aggregation: str, field: str | None
) -> tuple[str, str] | None:
    """The first of a definition's fields (aggregation, then field) that differs from a
    registered meter's, with why; a charge that names no field takes the meter's."""
    if aggregation != known.aggregation:
        return "aggregation", (
            f"meter {known.meter!r} is registered with aggregation {known.aggregation!r}"
        )
    if field is not None and field != known.field:
        return "field", f"meter {known.meter!r} is registered with field {known.field!r}"
    return None


class MeterCommands(ApplicationCore):
    def register_meter(
        self,
        meter: str,
        name: str,
        aggregation: str,
        field: str | None = None,
        unit: str | None = None,
        principal: Principal = SYSTEM,
    ) -> tuple[MeterDefinition, bool]:
        """Register a meter; the same definition again is answered with the one recorded
        (False: nothing new), another aggregation or field is a conflict."""
        check_identifier(meter, "meter")
        check_identifier(name, "name")
        if aggregation not in METER_AGGREGATIONS:
            raise InvalidInput(
                f"must be one of {', '.join(METER_AGGREGATIONS)}", field="aggregation"
            )
        if field is not None:
            check_id(field, "field", MAX_PROPERTY_KEY_LENGTH)
        if aggregation == "unique_count" and field is None:
            raise InvalidInput("unique_count needs the property name in 'field'", field="field")
        if unit is not None:
            check_text(unit, "unit", MAX_UNIT_LENGTH)

        def attempt() -> tuple[MeterDefinition, bool]:
            known = self.meter_registry.get(meter)
            if known is not None:
                for name_of, recorded, asked in (
                    ("aggregation", known.aggregation, aggregation),
                    ("field", known.field, field),
                ):
                    if recorded != asked:
                        raise MeterConflict(
                            f"meter {meter!r} is registered with {name_of} {recorded!r}",
                            field=name_of,
                        )
                if self._find(meter_uuid(meter), Meter) is not None:
                    return known, False
            registered = Meter(
                meter=meter,
                name=name,
                aggregation=aggregation,
                field=field,
                unit=unit,
                plan_id=None,
                actor=principal.actor,
            )
            try:
                self.save(registered)
            except IntegrityError:
                self.meter_registry.refresh()
                raise
            found = self.meter_registry.get(meter, fresh=True)
            assert found is not None
            return found, True

        return self._retry(attempt)

    def meter(self, meter: str) -> MeterDefinition:
        """A registered meter; unknown is not found."""
        found = self.meter_registry.get(meter, fresh=True)
        if found is None:
            raise MeterNotFound(f"no meter {meter!r}")
        return found

    def meters(self, after: str | None = None, limit: int = 100) -> list[MeterDefinition]:
        """Registered meters in id order, after a meter id."""
        return [m for m in self.meter_registry.all() if after is None or m.meter > after][:limit]

    def _charges_with_meters(self, charges: Any) -> Any:
        """A plan's charges, each that names no aggregation taking its registered meter's
        aggregation and field."""
        if not isinstance(charges, list):
            return charges
        filled = []
        for charge in charges:
            meter = charge.get("meter") if isinstance(charge, Mapping) else None
            known = self.meter_registry.get(meter) if isinstance(meter, str) else None
            if known is not None and isinstance(charge, Mapping) and "aggregation" not in charge:
                charge = {**charge, "aggregation": known.aggregation}
                if known.field is not None and "field" not in charge:
                    charge["field"] = known.field
            filled.append(charge)
        return filled

    def _meters_of_charges(
        self, plan_id: str, charges: list[dict[str, Any]], principal: Principal
    ) -> list[Meter]:
        """The meters a plan's charges register (those not registered yet); a charge that
        contradicts its registered meter is refused, naming the charge's field."""
        new: list[Meter] = []
        for index, charge in enumerate(charges):
            known = self.meter_registry.get(charge["meter"])
            if known is None:
                new.append(
                    Meter(
                        meter=charge["meter"],
                        name=charge["meter"],
                        aggregation=charge["aggregation"],
                        field=charge.get("field"),
                        unit=None,
                        plan_id=plan_id,
                        actor=principal.actor,
                    )
                )
                continue
            differs = _contradiction(known, charge["aggregation"], charge.get("field"))
            if differs is not None:
                raise InvalidInput(differs[1], field=f"charges[{index}].{differs[0]}")
        return new
