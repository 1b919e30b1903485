export const BUILD_MARK: string
export function build (): void
export function isCurrent (): boolean
