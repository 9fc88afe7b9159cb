// Expand every recurring VEVENT of an .ics file with ical.js (Thunderbird's parser), using only
// the VTIMEZONEs inside the file (ical.js has no zone database of its own), and print each
// occurrence as JSON: its UTC instant and its wall time in a given zone.
//
//   node expand.mjs FILE.ics ZONE FROM TO     (FROM, TO: ISO instants, e.g. 2026-01-01T00:00:00Z)
//
// Output: [{"uid", "recurrence_id", "start_utc", "start_local", "status"}, ...] sorted by start.
// "start_utc" comes from ical.js's own offset arithmetic: the caller checks it against the real
// zone, so a VTIMEZONE that ical.js misreads shows up as a wrong hour.
import { readFileSync } from "node:fs";
import ICAL from "ical.js";

const [file, zoneName, fromIso, toIso] = process.argv.slice(2);
if (!file || !zoneName || !fromIso || !toIso) {
  console.error("usage: node expand.mjs FILE.ics ZONE FROM TO");
  process.exit(2);
}
const from = Date.parse(fromIso) / 1000;
const to = Date.parse(toIso) / 1000;
const root = new ICAL.Component(ICAL.parse(readFileSync(file, "utf8")));
for (const vtz of root.getAllSubcomponents("vtimezone")) {
  ICAL.TimezoneService.register(vtz);
}
const zone = ICAL.TimezoneService.get(zoneName);
if (!zone) {
  console.error(`no VTIMEZONE ${zoneName} in ${file}`);
  process.exit(3);
}
const iso = (t) => t.toString().replace(/Z$/, "");
const out = [];
for (const vevent of root.getAllSubcomponents("vevent")) {
  const event = new ICAL.Event(vevent);
  if (event.isRecurrenceException()) continue; // reached through its master
  const status = vevent.getFirstPropertyValue("status") || "";
  const it = event.iterator();
  for (let next = it.next(); next; next = it.next()) {
    if (next.toUnixTime() >= to + 366 * 86400) break; // moved instances may move earlier
    const details = event.getOccurrenceDetails(next);
    const start = details.startDate;
    const unix = start.toUnixTime();
    if (unix < from || unix >= to) continue;
    out.push({
      uid: event.uid,
      recurrence_id: new Date(details.recurrenceId.toUnixTime() * 1000).toISOString(),
      start_utc: new Date(unix * 1000).toISOString(),
      start_local: iso(start.convertToZone(zone)),
      status: (details.item.component.getFirstPropertyValue("status") || status).toString(),
    });
  }
}
out.sort((a, b) => (a.start_utc < b.start_utc ? -1 : a.start_utc > b.start_utc ? 1 : 0));
process.stdout.write(JSON.stringify(out) + "\n");
