/**
 * A promise's own answer, or `late()`'s once `ms` have passed (a throw there rejects), whichever
 * comes first. The timer never outlives the race: a settled promise does not keep the process up.
 */
export function within<T, L> (p: Promise<T>, ms: number, late: () => L): Promise<T | L> {
  let timer: NodeJS.Timeout | undefined
  const timeout = new Promise<L>((resolve, reject) => {
    timer = setTimeout(() => { try { resolve(late()) } catch (err) { reject(err) } }, ms)
  })
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer))
}
