-- Argo CD health of a KezChat (chat.kez.lat/KezChat), from its kstatus
-- conditions. Install it in argocd-cm under
-- resource.customizations.health.chat.kez.lat_KezChat (README: "Health in
-- Flux and Argo CD").
local hs = { status = "Progressing", message = "waiting for the operator" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
if obj.metadata.generation ~= nil and obj.status.observedGeneration ~= obj.metadata.generation then
  hs.message = "the operator has not yet seen the latest spec"
  for _, c in ipairs(obj.status.conditions) do
    if c.type == "Paused" and c.status == "True" then
      hs.status = "Suspended"
      hs.message = c.message
    end
  end
  return hs
end
local by = {}
for _, c in ipairs(obj.status.conditions) do
  by[c.type] = c
end
if by.Paused ~= nil and by.Paused.status == "True" then
  hs.status = "Suspended"
  hs.message = by.Paused.message
elseif by.Stalled ~= nil and by.Stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = by.Stalled.message
elseif by.Reconciling ~= nil and by.Reconciling.status == "True" then
  hs.status = "Progressing"
  hs.message = by.Reconciling.message
elseif by.Ready ~= nil and by.Ready.status == "True" then
  hs.status = "Healthy"
  hs.message = by.Ready.message
elseif by.Ready ~= nil then
  hs.message = by.Ready.message
end
return hs
