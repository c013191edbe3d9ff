// Mutual TLS: the identity a verified client certificate asserts (its subject's single CN), and the connect step
// that holds a connection to the principal its certificate names.
import type { TLSSocket } from 'node:tls';

export interface ClientCertificatePolicy {
  /** PEM file of the CA that issues client certificates; the TLS and WSS listeners require one it issued. */
  ca: string;
  /**
   * Whether a device must present its token besides its certificate (default true). When false, a device whose
   * certificate names it may connect with an empty password; applications always need their token.
   */
  tokenRequired: boolean;
}

/** What a client certificate says about its holder, after the TLS handshake verified it against the CA. */
export interface CertificateIdentity {
  /**
   * The subject's common name: the device id (or application id) the certificate was issued to. Undefined when
   * the subject has no CN or more than one, which names nobody.
   */
  id: string | undefined;
  /** Start of the certificate's validity, Unix seconds: a revocation at or after it refuses the certificate. */
  notBefore: number;
}

/**
 * The identity of a TLS connection's client certificate, or undefined when the connection has none that the CA
 * verified (a listener without mutual TLS). Read once, at the start of the connection.
 */
export function certificateIdentity(socket: TLSSocket): CertificateIdentity | undefined {
  if (!socket.authorized) return undefined;
  const cert = socket.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return undefined;
  const cn: unknown = cert.subject?.CN;
  return {
    // Node gives several CN attributes as an array: ambiguous, so no identity.
    id: typeof cn === 'string' && cn.length > 0 ? cn : undefined,
    notBefore: Math.floor(Date.parse(cert.valid_from) / 1000),
  };
}

/**
 * The connect step: a connection that came with a client certificate may only authenticate as the principal the
 * certificate names (device id = client id = username = token subject = certificate CN). Returns why not, or
 * undefined when it may.
 */
export function certificateMismatch(
  certificate: CertificateIdentity | undefined,
  principalId: string,
): string | undefined {
  if (!certificate) return undefined;
  if (certificate.id === undefined) return 'no client certificate naming a single subject CN';
  if (certificate.id !== principalId) return 'the client certificate was issued to another principal';
  return undefined;
}

/** Tracks the certificate identity of each connection, for the plugin's connect step. */
export class ClientCertificates {
  private readonly byConnection = new WeakMap<object, CertificateIdentity>();

  constructor(readonly policy: Readonly<ClientCertificatePolicy>) {}

  /**
   * Records the identity of `connection` (the stream Aedes handles), read from its TLS socket on a listener that
   * requires client certificates. A certificate that cannot be read there names nobody, so such a connection can
   * authenticate as no one rather than skip the check.
   */
  record(connection: object, socket: TLSSocket): void {
    this.byConnection.set(connection, certificateIdentity(socket) ?? { id: undefined, notBefore: Infinity });
  }

  of(connection: object): CertificateIdentity | undefined {
    return this.byConnection.get(connection);
  }
}
