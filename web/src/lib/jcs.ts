// RFC 8785 JSON Canonicalization Scheme: the bytes every signature covers.
// JSON.stringify already writes strings and numbers the way JCS wants
// (minimal escapes, ECMAScript number form); JCS adds sorted members (by
// UTF-16 code units, which is what Array.prototype.sort compares) and
// refuses what has no canonical form.

const loneSurrogate = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

export function canonicalize(value: unknown): string {
  switch (typeof value) {
    case 'boolean':
      return value ? 'true' : 'false';
    case 'number':
      if (!Number.isFinite(value)) throw new Error(`JCS: ${value} has no JSON form`);
      return JSON.stringify(value);
    case 'string':
      if (loneSurrogate.test(value)) throw new Error('JCS: string has a lone surrogate');
      return JSON.stringify(value);
    case 'object': {
      if (value === null) return 'null';
      if (Array.isArray(value)) return `[${value.map(canonicalize).join(',')}]`;
      const obj = value as Record<string, unknown>;
      const members = Object.keys(obj)
        .filter((k) => obj[k] !== undefined)
        .sort()
        .map((k) => `${canonicalize(k)}:${canonicalize(obj[k])}`);
      return `{${members.join(',')}}`;
    }
    default:
      throw new Error(`JCS: cannot canonicalize a ${typeof value}`);
  }
}
