// Minimal type declarations for the parts of sm-crypto (portable SM3/SM4) that the portable backend uses.
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
}
