// Packets to stored rows and back: the payload as a BLOB (a string payload is flagged and given back as a string),
// every other field as JSON. Pure code, no I/O.

/** A packet as Aedes hands it to the persistence: a PUBLISH (retained, queued, incoming, a will) or a PUBREL. */
export interface StoredPacket {
  cmd?: string;
  topic?: string;
  payload?: Buffer | string;
  messageId?: number;
  brokerId?: string | null;
  brokerCounter?: number;
  [field: string]: unknown;
}

export interface PacketRow {
  meta: string;
  payload: Buffer | null;
}

/** Marks, in the JSON part, a payload that was a string. */
const TEXT = '$payloadText';

export function encodePacket(packet: StoredPacket): PacketRow {
  const { payload, ...rest } = packet;
  const meta: Record<string, unknown> = { ...rest };
  if (typeof payload === 'string') meta[TEXT] = true;
  return {
    meta: JSON.stringify(meta),
    payload: payload === undefined ? null : typeof payload === 'string' ? Buffer.from(payload) : payload,
  };
}

/** The fields of a stored packet (its JSON part parsed, the payload put back), as a plain object. */
export function decodePacket(row: PacketRow): StoredPacket {
  const packet = JSON.parse(row.meta) as StoredPacket;
  if (row.payload !== null) packet.payload = packet[TEXT] ? row.payload.toString() : row.payload;
  delete packet[TEXT];
  return packet;
}
