// Minimal type declarations for the parts of sm-crypto used here: SM3/SM4 (portable backend), SM2 (factory batches).
declare module 'sm-crypto' {
  interface Sm4Options {
    mode?: 'cbc';
    iv?: number[] | string;
    padding?: 'none' | 'pkcs#7' | 'pkcs#5';
    output?: 'array' | 'string';
  }
  export const sm4: {
    encrypt(
      input: number[] | Uint8Array,
      key: number[] | Uint8Array,
      options: Sm4Options & { output: 'array' },
    ): number[];
    decrypt(
      input: number[] | Uint8Array,
      key: number[] | Uint8Array,
      options: Sm4Options & { output: 'array' },
    ): number[];
  };
  export function sm3(input: Uint8Array | string, options?: { key: Uint8Array | string }): string;
  export const sm2: {
    generateKeyPairHex(a?: string, b?: number): { privateKey: string; publicKey: string };
    verifyPublicKey(publicKey: string): boolean;
    /** The uncompressed public point (04 || x || y, hex) of private scalar `privateKey` (hex). */
    getPublicKeyFromPrivateKey(privateKey: string): string;
    doEncrypt(msg: number[], publicKey: string, cipherMode: 0 | 1): string;
    doDecrypt(data: string, privateKey: string, cipherMode: 0 | 1, options: { output: 'array' }): number[];
    doSignature(
      msg: number[],
      privateKey: string,
      options: { hash: boolean; publicKey: string; userId: string; pointPool: unknown[]; der?: boolean },
    ): string;
    doVerifySignature(
      msg: number[],
      signature: string,
      publicKey: string,
      options: { hash: boolean; userId: string },
    ): boolean;
  };
}

declare module 'jsbn' {
  export class BigInteger {
    constructor(value: string, radix: number);
  }
}
