import type { DocId } from '@keel/engine';
import { IndexeddbPersistence } from 'y-indexeddb';
import type * as Y from 'yjs';
import type { ExternalDocState } from '../sync/doc-sync.js';

export interface YIndexedDbStateOptions {
  /**
   * Start of each document's database name; the document's opaque id follows, so names say
   * nothing about what a document holds. Give each identity on one origin its own prefix.
   */
  readonly dbPrefix?: string;
}

/**
 * Document content in IndexedDB through y-indexeddb, one database per document. y-indexeddb
 * uses the global `indexedDB`. Detaching stops persisting and closes the database; the stored
 * content stays.
 */
export const createYIndexedDbState = (options: YIndexedDbStateOptions = {}): ExternalDocState => {
  const prefix = options.dbPrefix ?? 'keel-doc-';
  const attached = new Map<Y.Doc, IndexeddbPersistence>();
  return {
    attach: async (doc: Y.Doc, docId: DocId) => {
      if (attached.has(doc)) throw new Error(`document ${docId} is already attached to IndexedDB`);
      const persistence = new IndexeddbPersistence(prefix + docId, doc);
      attached.set(doc, persistence);
      try {
        // `whenSynced` never settles when the database cannot be opened; `_db` rejects then.
        await Promise.all([persistence._db, persistence.whenSynced]);
      } catch (error) {
        attached.delete(doc);
        await persistence.destroy().catch(() => undefined);
        throw error;
      }
    },
    detach: async (doc: Y.Doc) => {
      const persistence = attached.get(doc);
      if (!persistence) return;
      attached.delete(doc);
      // Writes already issued still commit: closing IndexedDB waits for running transactions.
      await persistence.destroy();
    },
  };
};
